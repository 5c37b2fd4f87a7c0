"""Compare: runs side by side, next to the reference study; curves, bars, details, downloads."""

import pandas as pd
import streamlit as st

from dashboard.charts import bars, overlay
from dashboard.classroom import is_teacher, visible_runs
from dashboard.details import details_ui
from dashboard.forms import SOURCE_NAMES, study_estimate_ui
from dashboard.front import front_ui
from dashboard.lessons import COMPARE_FOCUS
from dashboard.paper import queue_table_ui, table_ui
from dashboard.state import client_address, get_runner, get_store, owner_id
from dashboard.text import md_escape
from mtl_core.analysis import (
    band,
    compare_rows,
    comparison_json,
    curve_rows,
    delta_m_missing,
    group_delta_m,
    group_label,
    group_rows,
    missing_baselines,
    ordered_columns,
    run_label,
    seed_study_rows,
    sort_seeds,
)
from mtl_core.config import TrainConfig
from mtl_core.data import SOURCES
from mtl_core.jobs.runner import QueueFull
from mtl_core.metrics import mean_std
from mtl_core.reference import SEED_MODELS, SEED_STUDY
from mtl_core.store.runs import StoreUnavailable
from mtl_core.text import spreadsheet_safe

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

queue_table_ui()

if not runs:
    st.info("No runs to compare yet: train one on the Train page, or queue the seed study above.")
    st.stop()

by_id = {r["id"]: r for r in runs}
# After a lesson: exactly its runs (finished or not yet); otherwise the newest six finished ones.
focus = [i for i in st.session_state.get(COMPARE_FOCUS, []) if i in by_id]
default = focus or [r["id"] for r in runs if r["status"] == "finished"][:6]
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

# A unit is what one row, line and bar stands for: one run, or with "combine" one configuration over
# its seeds (its line the mean with a band of ± std, its bar the mean with the std as error bar).
# Only one student's runs pool, unless the teacher says otherwise; a repeated seed never counts twice.
students = len({r["owner"] for r in selected}) > 1  # the teacher's view or the class gallery
may_pool = is_teacher() and students
widest = sort_seeds(selected, across_owners=may_pool)
combine = (bool(widest.duplicates) or any(len(g) > 1 for g in widest.groups)) and st.toggle(
    "Combine seeds: one row per configuration, mean ± std over its seeds",
    value=True,
    key="compare_combine",
    help="One student's runs that differ only in their seed are one configuration. A difference between two "
    "configurations smaller than the spread between seeds of one of them is noise. A run that repeats a seed "
    "is the same experiment again: only the newest finished run of each seed counts.",
)
across = (
    combine
    and may_pool
    and st.toggle(
        "Combine across students",
        value=False,
        key="compare_across",
        help="Pool the same configuration from every student into one row; a seed two students both trained "
        "still counts once.",
    )
)
seeds = sort_seeds(selected, across_owners=across)
groups = seeds.groups
units = groups if combine else [[r] for r in selected]


def unit_label(unit: list[dict]) -> str:
    return group_label(unit) if combine else run_label(unit[0])


if combine:
    rows = group_rows(seeds, pool=runs, students=students)
    no_dm = [(group_label(g), group_delta_m(g, runs)[1]) for g in groups]
else:
    rows = compare_rows(selected, pool=runs, students=students)
    no_dm = [(run_label(r), delta_m_missing(r, runs)) for r in selected]
table = pd.DataFrame(rows, columns=ordered_columns(rows))  # the same order whichever run comes first
st.subheader("Your runs")
st.dataframe(table, hide_index=True, width="stretch")
no_dm = [f"{md_escape(label)}: {why}" for label, why in no_dm if why]
if no_dm:
    st.caption("No Δm for " + "; ".join(no_dm) + ".")
if combine and seeds.duplicates:
    repeats = [
        f"{run_label(d)} repeats seed {kept['config'].get('seed', 0)} of {run_label(kept)}"
        for d, kept in seeds.duplicates.values()
    ]
    st.caption(
        "Not counted as seeds (the same seed again is the same experiment, not another sample; the newest "
        "finished run of each seed counts): " + "; ".join(md_escape(t) for t in repeats) + "."
    )
missing = missing_baselines(selected, runs)
if missing:
    word = "run" if len(missing) == 1 else "runs"
    if st.button(f"Train the {len(missing)} missing single-task baseline {word} for Δm", key="train_baselines"):
        configs = [TrainConfig.from_dict(c) for c in missing]
        labels = [f"{c.model} · seed {c.seed}" for c in configs]
        try:
            get_runner().submit_many(configs, owner_id(), labels, client=client_address())
        except QueueFull as exc:
            st.warning(f"The baselines need {len(configs)} free job slots: {exc}.")
        except StoreUnavailable as exc:
            st.warning(str(exc))
        else:
            st.success(f"Queued {len(configs)} single-task {word}. Δm appears here when they finish.")
# Units grouped by the set of tasks they answer: accuracies and losses rank only within one set.
task_sets: dict[str, list[list[dict]]] = {}
for unit in units:
    task_sets.setdefault("+".join(sorted(unit[0]["config"]["tasks"])), []).append(unit)
if len(task_sets) > 1:
    st.caption("These runs answer different sets of tasks: each set gets its own charts, never one ranking.")
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
table_ui(runs)
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
        "finished single-task run of the same family with the same tasks, data, seed and budget (epochs, "
        "digits, validation split); over seeds, paired seed by seed (MAE counts lower as better). `train_s` is "
        "wall-clock time on this server, which may have been training other students' jobs at the same time. "
        '"Best" is the epoch with the best average accuracy on the validation digits where a run held some out '
        "(More settings); its test numbers are then scored once, at the end. Without them the best epoch is "
        "picked on the test set, as both reference studies do, which flatters every run a little."
    )

histories = {r["id"]: store.epochs(r["id"]) for r in selected}
curves = pd.DataFrame([row for r in selected for row in curve_rows(r, histories[r["id"]])])
d1, d2, d3 = st.columns(3)
full_rows = (
    group_rows(seeds, pool=runs, rounded=False, students=students)
    if combine
    else compare_rows(selected, pool=runs, rounded=False, students=students)
)
full = pd.DataFrame(full_rows, columns=ordered_columns(full_rows))
# spreadsheet_safe: a run name such as =HYPERLINK(...) stays text when the CSV is opened in a spreadsheet.
table_csv, curves_csv = (spreadsheet_safe(t).to_csv(index=False) for t in (full, curves))
d1.download_button("⬇ Table (CSV)", table_csv, "comparison.csv", "text/csv", key="dl_table_csv")
d2.download_button("⬇ Curves (CSV)", curves_csv, "curves.csv", "text/csv", key="dl_curves_csv")
d3.download_button(
    "⬇ Table and curves (JSON)",
    comparison_json(full.to_dict("records"), curves.to_dict("records")),
    "comparison.json",
    "application/json",
    key="dl_json",
)

# Only the open tab is built and sent (on_change="rerun"): with a class's worth of runs, seven Plotly
# figures at once made opening this page slow in the browser as much as on the server.
curves_tab, bars_tab, inside_tab, front_tab = st.tabs(
    ["📈 Curves", "📊 Parameters, time, accuracy", "🔍 Look inside one run", "⚖ Pareto front"],
    key="compare_view",
    on_change="rerun",
)


def set_title(title: str, tasks: str) -> str:
    return f"{title} · {tasks}" if len(task_sets) > 1 else title


def split_word(group: list[list[dict]]) -> str:
    """Which digits the per-epoch accuracy of these runs was measured on."""
    held_out = {bool(r["config"].get("val_split")) for unit in group for r in unit}
    if held_out == {True}:
        return "Validation"
    return "Test (validation where digits were held out)" if held_out == {True, False} else "Test"


def curve(unit: list[dict], key: str) -> tuple[list, list, list | None]:
    """Epochs, values and (over several seeds) the std: one run's curve, or the seeds' mean and spread."""
    epochs, mean, std = band([histories[r["id"]] for r in unit], key)
    return epochs, mean, std if len(unit) > 1 else None


def unit_stat(unit: list[dict], get) -> tuple[float | None, float | None]:
    """Mean and std over the unit's finished runs (the one run's value, std None, without combine)."""
    done = [r for r in unit if r["status"] == "finished"] if len(unit) > 1 else unit
    return mean_std([v for v in map(get, done) if v is not None])


if curves_tab.open:
    with curves_tab:
        for i, (tasks, group) in enumerate(task_sets.items()):
            c1, c2 = st.columns(2)
            avg = {unit_label(u): curve(u, "avg_acc") for u in group}
            avg = {name: c for name, c in avg.items() if c[0]}
            loss = {unit_label(u): curve(u, "train_loss_total") for u in group}
            loss = {name: c for name, c in loss.items() if c[0]}
            c1.plotly_chart(
                overlay(
                    {n: (x, y) for n, (x, y, _) in avg.items()},
                    set_title(f"{split_word(group)} average accuracy", tasks),
                    "accuracy",
                    y_max=1.01,
                    spread={n: sd for n, (_, _, sd) in avg.items() if sd is not None},
                ),
                key=f"ov_acc_{i}",
                width="stretch",
            )
            c2.plotly_chart(
                overlay(
                    {n: (x, y) for n, (x, y, _) in loss.items()},
                    set_title("Train loss (weighted sum over tasks)", tasks),
                    "loss",
                    spread={n: sd for n, (_, _, sd) in loss.items() if sd is not None},
                ),
                key=f"ov_loss_{i}",
                width="stretch",
            )
        st.caption(
            "Look for: which run climbs fastest, and where each curve flattens. Train loss still falling while "
            "test accuracy stalls or drops means the model starts to memorise the training digits."
            + (" A shaded band is the mean ± one standard deviation over the seeds." if combine else "")
        )

if bars_tab.open:
    with bars_tab:
        # One row of charts per task set: a run answering other tasks is never ranked beside these.
        for i, (tasks, group) in enumerate(task_sets.items()):
            names = [unit_label(u) for u in group]
            # (key, title, value of one run, number format, axis cut near the values)
            charts = [
                ("params", "Parameters", lambda r: r["params"], "{:,.0f}", False),
                ("time", "Training time (s)", lambda r: r["train_seconds"], "{:.1f}", False),
                ("acc", "Best average accuracy (%)", lambda r: r["best_avg"] and 100 * r["best_avg"], "{:.2f}", True),
            ]
            for col, (key, title, value, fmt, zoom) in zip(st.columns(3), charts):
                stats = [unit_stat(u, value) for u in group]
                col.plotly_chart(
                    bars(
                        names,
                        [m for m, _ in stats],
                        set_title(title, tasks),
                        fmt,
                        zoom=zoom,
                        errors=None if key == "params" else [sd for _, sd in stats],  # params: the same every seed
                    ),
                    key=f"bar_{key}_{i}",
                    width="stretch",
                )
        st.caption(
            "Look for: the same accuracy with fewer parameters is sharing paying off. Time is wall time on this "
            "server (other jobs ran beside), so compare it only between runs trained at the same moment."
            + (" Error bars: ± one standard deviation over the seeds." if combine else "")
        )

if inside_tab.open:
    with inside_tab:
        detail = st.selectbox("Run", chosen, format_func=lambda i: run_label(by_id[i]), key="detail_run")
        details_ui(by_id[detail])

if front_tab.open:
    with front_tab:
        front_ui(selected)
