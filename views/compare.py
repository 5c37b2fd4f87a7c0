"""Compare: runs side by side, next to the reference study; curves, bars, details, downloads."""

import pandas as pd
import streamlit as st

from dashboard.charts import bars, overlay
from dashboard.classroom import visible_runs
from dashboard.details import details_ui
from dashboard.forms import SOURCE_NAMES, study_estimate_ui
from dashboard.state import client_address, get_runner, get_store, owner_id
from dashboard.text import md_escape
from mtl_core.analysis import (
    compare_rows,
    comparison_json,
    curve_rows,
    delta_m_missing,
    ordered_columns,
    run_label,
    seed_study_rows,
)
from mtl_core.config import TrainConfig
from mtl_core.data import SOURCES
from mtl_core.jobs import QueueFull
from mtl_core.reference import SEED_MODELS, SEED_STUDY
from mtl_core.runs import StoreUnavailable

st.title("📊 Compare")
store = get_store()
runs = [r for r in visible_runs() if r["status"] != "queued"]

with st.expander("Run the seed study (STL, hard sharing, cross-stitch on the same data and seed)", expanded=not runs):
    with st.form("seed_study"):
        c1, c2, c3 = st.columns(3)
        epochs = c1.number_input("Epochs", 1, 200, 20, key="seed_epochs")
        data = c2.selectbox("Data", SOURCES, format_func=SOURCE_NAMES.get, key="seed_data")
        seed = c3.number_input("Seed", 0, 2**31 - 1, 0, key="seed_seed")
        study_estimate_ui(int(st.session_state.get("seed_epochs", 20)), st.session_state.get("seed_data", "auto"))
        if st.form_submit_button("Queue the three runs", type="primary"):
            cfgs = [TrainConfig.preset(m, epochs=int(epochs), data=data, seed=int(seed)) for m in SEED_MODELS]
            try:  # all three or none, checked in one transaction: a partial study compares nothing
                get_runner().submit_many(
                    cfgs, owner_id(), [f"seed study {m}" for m in SEED_MODELS], client=client_address()
                )
            except QueueFull as exc:
                st.warning(f"The seed study needs {len(SEED_MODELS)} free job slots: {exc}.")
            except StoreUnavailable as exc:
                st.warning(str(exc))
            else:
                st.success("Queued STL, hard sharing and cross-stitch. Watch them on the Train page.")

if not runs:
    st.info("No runs to compare yet: train one on the Train page, or queue the seed study above.")
    st.stop()

by_id = {r["id"]: r for r in runs}
default = [r["id"] for r in runs if r["status"] == "finished"][:6]
chosen = st.multiselect(
    "Runs",
    list(by_id),
    default=default,
    key="compare_runs",
    format_func=lambda i: f"{run_label(by_id[i])} ({by_id[i]['status']})",
)
selected = [by_id[i] for i in chosen]
if not selected:
    st.info("Pick one or more runs above.")
    st.stop()

rows = compare_rows(selected, pool=runs)
table = pd.DataFrame(rows, columns=ordered_columns(rows))  # the same order whichever run comes first
st.subheader("Your runs")
st.dataframe(table, hide_index=True, width="stretch")
no_dm = [(run_label(r), delta_m_missing(r, runs)) for r in selected]
no_dm = [f"{md_escape(label)}: {why}" for label, why in no_dm if why]
if no_dm:
    st.caption("No Δm for " + "; ".join(no_dm) + ".")
# Runs grouped by the set of tasks they answer: accuracies and losses rank only within one set.
task_sets: dict[str, list[dict]] = {}
for r in selected:
    task_sets.setdefault("+".join(sorted(r["config"]["tasks"])), []).append(r)
if len(task_sets) > 1:
    st.caption("These runs answer different sets of tasks: compare their average accuracies only within one task set.")
study = seed_study_rows(runs)
if study:
    st.subheader("Your seed study beside the reference")
    st.dataframe(pd.DataFrame(study), hide_index=True, width="stretch")
    unlike = {f"{r['data']} data" for r in study if r["data"] != "mnist"} | {
        f"{r['epochs']} epochs" for r in study if r["epochs"] != 20
    }
    st.caption(
        "The reference trained on full MNIST for 20 epochs on its own machine"
        + (f"; this study used {', '.join(sorted(unlike))}, so expect its numbers to differ." if unlike else ".")
        + " Differences of a few tenths of a point are what another seed gives."
    )
left, right = st.columns([3, 2])
with left:
    st.markdown("**Reference study** (published figures, not measured here)")
    st.dataframe(
        pd.DataFrame(
            [
                {
                    "model": m,
                    "params": f["params"],
                    "train_s": f["train_seconds"],
                    "best avg acc %": round(100 * f["best_avg"], 2),
                }
                for m, f in SEED_STUDY["rows"].items()
            ]
        ),
        hide_index=True,
        width="stretch",
    )
with right:
    st.caption(
        f"Reference: {SEED_STUDY['source']}. Δm is the mean relative change per task against the newest "
        "finished STL run with the same tasks and data (MAE counts lower as better). `train_s` is wall-clock "
        "time on this server, which may have been training other students' jobs at the same time. "
        '"Best" is the epoch with the best average test accuracy: chosen on the test set, as both reference '
        "studies do, so it flatters every run a little (there is no separate validation split yet)."
    )

histories = {r["id"]: store.epochs(r["id"]) for r in selected}
curves = pd.DataFrame([row for r in selected for row in curve_rows(r, histories[r["id"]])])
d1, d2, d3 = st.columns(3)
full_rows = compare_rows(selected, pool=runs, rounded=False)
full = pd.DataFrame(full_rows, columns=ordered_columns(full_rows))  # downloads keep every digit
d1.download_button("⬇ Table (CSV)", full.to_csv(index=False), "comparison.csv", "text/csv", key="dl_table_csv")
d2.download_button("⬇ Curves (CSV)", curves.to_csv(index=False), "curves.csv", "text/csv", key="dl_curves_csv")
d3.download_button(
    "⬇ Table and curves (JSON)",
    comparison_json(full.to_dict("records"), curves.to_dict("records")),
    "comparison.json",
    "application/json",
    key="dl_json",
)

# Only the open tab is built and sent (on_change="rerun"): with a class's worth of runs, seven Plotly
# figures at once made opening this page slow in the browser as much as on the server.
curves_tab, bars_tab, inside_tab = st.tabs(
    ["📈 Curves", "📊 Parameters, time, accuracy", "🔍 Look inside one run"], key="compare_view", on_change="rerun"
)


def set_title(title: str, tasks: str) -> str:
    return f"{title} · {tasks}" if len(task_sets) > 1 else title


if curves_tab.open:
    with curves_tab:
        for i, (tasks, group) in enumerate(task_sets.items()):
            c1, c2 = st.columns(2)
            avg = {
                run_label(r): ([h["epoch"] for h in histories[r["id"]]], [h["avg_acc"] for h in histories[r["id"]]])
                for r in group
                if histories[r["id"]] and histories[r["id"]][0]["avg_acc"] is not None
            }
            loss = {
                run_label(r): (
                    [h["epoch"] for h in histories[r["id"]]],
                    [h["train_loss_total"] for h in histories[r["id"]]],
                )
                for r in group
                if histories[r["id"]]
            }
            c1.plotly_chart(
                overlay(avg, set_title("Test average accuracy", tasks), "accuracy", y_max=1.01),
                key=f"ov_acc_{i}",
                width="stretch",
            )
            c2.plotly_chart(
                overlay(loss, set_title("Train loss (weighted sum over tasks)", tasks), "loss"),
                key=f"ov_loss_{i}",
                width="stretch",
            )
        st.caption(
            "Look for: which run climbs fastest, and where each curve flattens. Train loss still falling while "
            "test accuracy stalls or drops means the model starts to memorise the training digits."
        )

if bars_tab.open:
    with bars_tab:
        names = [run_label(r) for r in selected]
        b1, b2 = st.columns(2)
        b1.plotly_chart(bars(names, [r["params"] for r in selected], "Parameters"), key="bar_params", width="stretch")
        b2.plotly_chart(
            bars(names, [r["train_seconds"] for r in selected], "Training time (s)", "{:.1f}"),
            key="bar_time",
            width="stretch",
        )
        for col, (i, (tasks, group)) in zip(st.columns(max(2, len(task_sets))), enumerate(task_sets.items())):
            col.plotly_chart(
                bars(
                    [run_label(r) for r in group],
                    [None if r["best_avg"] is None else 100 * r["best_avg"] for r in group],
                    set_title("Best average accuracy (%)", tasks),
                    "{:.2f}",
                    zoom=True,
                ),
                key=f"bar_acc_{i}",
                width="stretch",
            )
        st.caption(
            "Look for: the same accuracy with fewer parameters is sharing paying off. Time is wall time on this "
            "server (other jobs ran beside), so compare it only between runs trained at the same moment."
        )

if inside_tab.open:
    with inside_tab:
        detail = st.selectbox("Run", chosen, format_func=lambda i: run_label(by_id[i]), key="detail_run")
        details_ui(by_id[detail])
