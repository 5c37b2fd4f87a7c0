"""A saved run looked at digit by digit: confusion matrices, the value scatter, a grid of test digits."""

from __future__ import annotations

import functools
import os

import numpy as np
import streamlit as st
from PIL import Image, ImageOps

from dashboard.charts import cell_of_point, confusion_heatmap, error_histogram, value_scatter
from dashboard.state import get_data, has_model, model_of
from mtl_core.analysis import confusion, data_source, is_mistake, load_predictions, predictions_on_test_set
from mtl_core.predict import to_display
from mtl_core.tasks import get_task, label_words

GRID = 24


@st.cache_data(max_entries=16, show_spinner="Scoring the test set…")
def _scored_now(run_id: str, weights_path: str, source: str) -> dict:
    """Only for runs without stored predictions (cut short before they ended, or made before them)."""
    from dashboard.state import get_store

    model, _, _ = model_of(get_store().get_run(run_id))
    return predictions_on_test_set(model, get_data(source))


def _predictions(run: dict, source: str) -> dict:
    """The test-set predictions the worker stored when the run ended; scored here only as a fallback."""
    path = run.get("preds_path")
    if path and os.path.exists(path):
        try:
            return load_predictions(path)
        except Exception:  # noqa: BLE001 - a damaged file: score again instead
            pass
    return _scored_now(run["id"], run["weights_path"], source)


def _tile(image: np.ndarray, wrong: bool) -> Image.Image:
    tile = Image.fromarray(to_display(image)).resize((84, 84), Image.NEAREST).convert("RGB")
    return ImageOps.expand(tile, border=4, fill=(230, 60, 50) if wrong else (60, 170, 90))


def _caption(preds: dict, i: int, digit: str) -> str:
    """The true digit (a MultiMNIST pair: "left | right"), then every task's answer; ✗ marks a wrong one."""
    parts = []
    for task, p in preds.items():
        t = get_task(task)
        if t.kind == "regression":
            parts.append(f"{p['pred'][i]:.1f}")
        else:
            ok = p["pred"][i] == p["true"][i]
            parts.append(("" if ok else "✗") + t.classes[int(p["pred"][i])])
    return f"{digit} → " + " · ".join(parts)


def details_ui(run: dict) -> None:
    if not has_model(run):
        st.info("This run has no saved model (it stopped before finishing an epoch).")
        return
    source = data_source(run)
    preds = _predictions(run, source)
    data = get_data(source)
    st.caption(f"Test set: {data.describe(detail=False)}")
    classification = [t for t in preds if get_task(t).is_classification]
    if classification:
        cols = st.columns(min(len(classification), 3))
        for i, task in enumerate(classification):
            t = get_task(task)
            m = confusion(preds[task]["true"], preds[task]["pred"], t.n_classes)
            acc = np.trace(m) / m.sum()
            cols[i % len(cols)].plotly_chart(
                confusion_heatmap(m, t.classes, f"{task} · accuracy {acc:.2%}"),
                key=f"cm_{task}",
                width="stretch",
                on_select=functools.partial(_open_clicked_cell, task, t.n_classes),  # it takes no args=
                selection_mode="points",
            )
        st.caption(
            "Look for big numbers off the diagonal: the answers this model mixes up. Click one (or open a cell "
            "below) to see the digits behind it."
        )
        cell_digits_ui(preds, data, classification)
    if "value" in preds:
        c1, c2 = st.columns(2)
        c1.plotly_chart(
            value_scatter(preds["value"]["true"], preds["value"]["pred"]), key="value_scatter", width="stretch"
        )
        c2.plotly_chart(
            error_histogram(preds["value"]["true"], preds["value"]["pred"]), key="value_hist", width="stretch"
        )
        st.caption(
            "Look for: points along the diagonal and errors bunched around 0. A digit whose points spread "
            "wide is one the network reads as a neighbour (a 4 as a 9, a 3 as an 8)."
        )
    st.markdown(
        f"**{GRID} test digits**: the true digit → every task's prediction ({' · '.join(preds)}); a red frame "
        "and ✗ mark a mistake."
    )
    rng = np.random.default_rng(0)
    idx = rng.choice(data.n_test, size=min(GRID, data.n_test), replace=False)
    idx = sorted(idx, key=lambda i: not is_mistake(preds, i))  # mistakes first: they teach the most
    images = [_tile(data.test_x[i, 0].numpy(), is_mistake(preds, i)) for i in idx]
    captions = [_caption(preds, i, label_words(data.test_y[i])) for i in idx]
    st.image(images, caption=captions, width=92, alt=[f"Test digit {c}" for c in captions])


def _open_clicked_cell(task: str, n_classes: int) -> None:
    """A click on a confusion-matrix cell opens that cell below (before the script reruns, so the picker's
    widgets can take its values)."""
    points = st.session_state[f"cm_{task}"].selection.points
    cell = next((c for c in (cell_of_point(p, n_classes) for p in points) if c), None)
    if cell is None:
        return
    st.session_state["cell_task"] = task
    st.session_state[f"cell_true_{task}"], st.session_state[f"cell_pred_{task}"] = cell
    st.session_state["cell_open"] = True


def cell_digits_ui(preds: dict, data, tasks: list[str]) -> None:
    """The test digits one confusion-matrix cell counts; it opens on the model's most common mistake, or
    on the cell last clicked in a matrix above."""
    with st.expander("🔎 Open a cell: the test digits it counts", key="cell_open", on_change="rerun"):
        task = st.selectbox("Task", tasks, key="cell_task")
        t = get_task(task)
        true, pred = preds[task]["true"], preds[task]["pred"]
        m = confusion(true, pred, t.n_classes)
        off = m - np.diag(np.diag(m))
        worst = np.unravel_index(int(off.argmax()), off.shape) if off.any() else (0, 0)
        c1, c2 = st.columns(2)
        names = list(range(t.n_classes))
        # The start (the worst mistake) goes into the state, not `index=`: a clicked cell sets the state too,
        # and Streamlit warns on a widget given both.
        for k, v in ((f"cell_true_{task}", worst[0]), (f"cell_pred_{task}", worst[1])):
            st.session_state.setdefault(k, int(v))
        row = c1.selectbox("True", names, format_func=lambda i: t.classes[i], key=f"cell_true_{task}")
        col = c2.selectbox("Predicted", names, format_func=lambda i: t.classes[i], key=f"cell_pred_{task}")
        idx = np.flatnonzero((true == row) & (pred == col))
        shown = idx[:GRID]
        st.caption(
            f"{len(idx)} test digits are {t.classes[row]} and were answered {t.classes[col]}"
            + (f"; the first {GRID}" if len(idx) > GRID else "")
            + ("." if len(idx) else ": none.")
        )
        if len(shown):
            wrong = row != col
            st.image(
                [_tile(data.test_x[i, 0].numpy(), wrong) for i in shown],
                caption=[label_words(data.test_y[i]) for i in shown],
                width=92,
            )
