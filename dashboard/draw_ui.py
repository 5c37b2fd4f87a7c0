"""Pieces of the Draw page: the uploaded-image check, the quick model, and one model's predictions."""

from __future__ import annotations

import hashlib
import time

import numpy as np
import streamlit as st

from dashboard.charts import class_probabilities
from dashboard.state import client_address, get_data, get_runner, model_of, owner_id
from dashboard.text import md_escape
from mtl_core.analysis import run_label
from mtl_core.checkpoint import ModelFileError, load_model_bytes
from mtl_core.config import TrainConfig
from mtl_core.predict import SALIENCY_METHODS, SMOOTHGRAD_SAMPLES, predict, saliency, saliency_overlay
from mtl_core.store.runs import store_problem
from mtl_core.tasks import VALUE_SCALE, get_task
from mtl_core.text import plain_text

# The quick model: the 4-task CNN (it answers every task) on at most 8,000 digits for 3 epochs.
QUICK_MODEL = dict(model="cnn", epochs=3, train_limit=8000)


def canvas_data_url(key: str) -> object:
    """What the canvas component `key` last sent as its picture (a data URL), still undecoded, or None
    before the first stroke. The page decodes it through mtl_core.predict.read_data_url, which checks
    its size first; the component's own `image_data` would decode any size it is sent."""
    value = st.session_state.get(key)
    drawing = value.get("drawing") if isinstance(value, dict) else None
    return drawing.get("data") if isinstance(drawing, dict) else None


def quick_model_ui(busy: bool) -> None:
    """Offer the quick model; `busy` (a job of yours is already training) greys the button out."""
    try:
        digits = min(QUICK_MODEL["train_limit"], get_data("auto").n_train)
    except Exception:  # noqa: BLE001 - the sidebar says why the data is missing
        digits = QUICK_MODEL["train_limit"]
    st.info(
        f"No trained model yet. Train a quick one (the 4-task CNN on {digits:,} digits, 3 epochs, "
        "well under a minute on a CPU), or train your own on the **Train** page."
    )
    if st.button("⚡ Train a quick model", type="primary", key="quick_model", disabled=busy):
        try:
            get_runner().submit(
                TrainConfig.preset(**QUICK_MODEL), owner=owner_id(), label="quick model", client=client_address()
            )
        except Exception as exc:  # noqa: BLE001 - QueueFull or ConfigError, shown as a message
            st.warning(store_problem(exc))  # never SQLite's own words
        else:
            st.rerun()  # show it training and start waiting for the model


def model_file_ui():
    """An uploaded .safetensors model (e.g. from `python -m mtl_core train --save`): (title, model) or None.

    The file is untrusted: safetensors holds no code, and load_model_bytes checks every key and shape."""
    with st.expander("Use a model file (.safetensors)"):
        upload = st.file_uploader("Model saved by this playground", type=["safetensors"], key="model_file")
    if upload is None:
        return None
    try:
        model, config, _ = load_model_bytes(upload.getvalue())
    except ModelFileError as exc:
        st.error(f"That model file cannot be used: {md_escape(exc)}")
        return None
    return f"{plain_text(upload.name, 60)} ({config.model})", model  # shown through md_escape or a table


def run_model(run: dict):
    """(title, model) of a stored run."""
    return run_label(run), model_of(run)[0]


def default_models(runs: list[dict], most: int = 4) -> list[str]:
    """The Draw page's preselection: the newest finished run of each model kind (a kind with none
    finished: its newest run with a model), up to `most` kinds. `runs` come newest first."""
    chosen: dict[str, str] = {}
    for r in runs:
        if r["status"] == "finished" and r["model"] not in chosen:
            chosen[r["model"]] = r["id"]
    for r in runs:
        chosen.setdefault(r["model"], r["id"])
    newest_first = [r["id"] for r in runs if r["id"] in chosen.values()]
    return newest_first[:most]


def _timed_predict(model, image: np.ndarray) -> tuple[dict[str, np.ndarray], float]:
    t0 = time.perf_counter()
    out = predict(model, image[None])
    return out, (time.perf_counter() - t0) * 1000


def _answer(task: str, probs: np.ndarray) -> str:
    t = get_task(task)
    if t.kind == "regression":
        return f"{float(probs[0]) * VALUE_SCALE:.2f}"
    p = probs[0]
    if t.kind == "multiclass":
        return f"{t.classes[int(p.argmax())]} ({p.max():.0%})"
    p_yes = float(p[1])
    return f"{t.classes[1] if p_yes >= 0.5 else t.classes[0]} (P({t.classes[1]}) = {p_yes:.0%})"


def predictions_table_ui(models: list[tuple[str, object]], image: np.ndarray) -> None:
    """Many models at once: one row per task, one column per model, and each model's inference time."""
    answers, times = {}, {}
    for title, model in models:
        out, ms = _timed_predict(model, image)
        answers[title] = {task: _answer(task, probs) for task, probs in out.items()}
        times[title] = f"{ms:.1f} ms"
    tasks = list(dict.fromkeys(t for a in answers.values() for t in a))
    rows = [{"task": f"{t}: {get_task(t).title}", **{m: a.get(t, "—") for m, a in answers.items()}} for t in tasks]
    rows.append({"task": "inference time", **times})
    # A static table, wrapped to the page's width (a scrolling grid was cut at the right with four models and
    # is no region a keyboard can reach); its cells are Markdown, and run names are user input: escaped.
    safe = [{md_escape(k): md_escape(v) for k, v in row.items()} for row in rows]
    st.table(safe)


def predictions_ui(title: str, model, image: np.ndarray, key: str) -> None:
    """Every task's answer from one model for one preprocessed 28x28 image."""
    out, ms = _timed_predict(model, image)
    st.markdown(f"**{md_escape(title)}**")
    st.caption(f"answered in {ms:.1f} ms")
    for task, probs in out.items():
        t = get_task(task)
        if t.kind == "regression":
            v = float(probs[0])
            st.metric(f"{task}: digit value", f"{v * VALUE_SCALE:.2f}", help=f"raw output d/9 = {v:.3f}")
        elif t.kind == "multiclass":
            p = probs[0]
            st.plotly_chart(
                class_probabilities(p, t.classes, f"{task}: {t.classes[int(p.argmax())]} ({p.max():.0%})"),
                key=f"{key}_{task}",
                width="stretch",
            )
        else:
            p_yes = float(probs[0][1])
            answer = t.classes[1] if p_yes >= 0.5 else t.classes[0]
            st.progress(p_yes, text=f"{t.title} → **{answer}** (P({t.classes[1]}) = {p_yes:.0%})")


def saliency_ui(models: list[tuple[str, object]], image: np.ndarray) -> None:
    """Per task, the pixels that drove one chosen model's answer, in red over the model's input (224 px)."""
    st.markdown("**Which pixels drove each answer**")
    left, right = st.columns([3, 2])
    pick = 0
    if len(models) > 1:
        pick = left.selectbox(
            "Model to explain", range(len(models)), format_func=lambda i: models[i][0], key="sal_model"
        )
    method = right.radio(
        "Method", list(SALIENCY_METHODS), format_func=SALIENCY_METHODS.get, key="sal_method", horizontal=True
    )
    title, model = models[min(pick, len(models) - 1)]
    # SmoothGrad on a CNN takes a noticeable moment; a rerun with the same drawing (a widget elsewhere
    # changed) reuses the maps instead of computing them again.
    key = (
        title,
        id(model),
        method,
        hashlib.sha256(np.ascontiguousarray(image, dtype=np.float32).tobytes()).hexdigest(),
    )
    cached = st.session_state.get("_saliency")
    if cached and cached[0] == key:
        maps, ms = cached[1], cached[2]
    else:
        t0 = time.perf_counter()
        maps = saliency(model, image, method)
        ms = (time.perf_counter() - t0) * 1000
        st.session_state["_saliency"] = (key, maps, ms)
    items = list(maps.items())
    for row in range(0, len(items), 2):  # two 224-px maps a row fit beside the drawing at 1280 px
        for col, (task, heat) in zip(st.columns(2), items[row : row + 2]):
            col.image(saliency_overlay(image, heat), width=224, caption=md_escape(f"{task} · {title}"),
                      alt=f"The drawing with the pixels behind the {task} answer in colour")  # fmt: skip
    how = (
        f"averaged over {SMOOTHGRAD_SAMPLES} copies of the input with noise added, which keeps the strokes that "
        "matter and drops the speckle of a single gradient (SmoothGrad, Smilkov et al. 2017)"
        if method == "smoothgrad"
        else "one gradient, which is noisy: switch to SmoothGrad for a steadier picture"
    )
    st.caption(
        f"Red: the pixels whose change would move that task's answer most: the gradient of its score with "
        f"respect to each input pixel, {how}; {ms:.0f} ms for all tasks. Tasks that look at different strokes "
        "use the shared layers differently."
    )
