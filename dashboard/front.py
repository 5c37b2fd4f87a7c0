"""The Pareto front on the Compare page: start a sweep of loss weights on two tasks, then see its runs as
points (task A's accuracy against task B's), the front, and its hypervolume; a click on a point opens its
run. While a sweep trains, the view refreshes itself as its points finish."""

from __future__ import annotations

import re
import uuid

import pandas as pd
import streamlit as st

from dashboard.charts import pareto_chart
from dashboard.classroom import visible_runs
from dashboard.forms import SOURCE_NAMES
from dashboard.state import client_address, get_runner, owner_id
from dashboard.text import md_escape
from mtl_core.analysis import run_label
from mtl_core.config import TrainConfig, weightings_for
from mtl_core.data import SOURCES
from mtl_core.jobs.runner import QueueFull
from mtl_core.models import MODELS, shares_parameters
from mtl_core.pareto import LABEL, front, hypervolume, sweep_configs
from mtl_core.store.runs import StoreUnavailable
from mtl_core.tasks import TASKS
from mtl_core.weighting import WEIGHTINGS

SWEEP = re.compile(rf"^{LABEL} ([0-9a-f]{{6}}): ")
SELECTED = ""  # the source "the runs selected above"
ACTIVE = ("queued", "running")


def sweeps(runs: list[dict]) -> dict[str, list[dict]]:
    """The sweeps among `runs` (by their label), newest first: sweep id -> its runs."""
    out: dict[str, list[dict]] = {}
    for r in sorted(runs, key=lambda r: r["created"], reverse=True):
        m = SWEEP.match(r.get("label") or "")
        if m:
            out.setdefault(m.group(1), []).append(r)
    return out


def _open_point() -> None:
    """A click on a point: its run opens on the Train page (the script switches page; a callback cannot)."""
    points = st.session_state["front_chart"].selection.points
    run_id = next((p.get("customdata") for p in points if p.get("customdata")), None)
    if run_id:
        st.session_state["front_open"] = run_id


def start_sweep_ui() -> None:
    with st.expander("Start a sweep: one run per weighting of two tasks, from all on one to all on the other"):
        sharing = [m for m in MODELS if shares_parameters(m)]
        c1, c2, c3 = st.columns(3)
        model = c1.selectbox("Model", sharing, format_func=lambda m: MODELS[m].title, key="front_model")
        recipe = TrainConfig.preset(model)
        c2.selectbox("Data", SOURCES, index=SOURCES.index(recipe.data), format_func=SOURCE_NAMES.get,
                     key=f"front_data_{model}")  # fmt: skip
        c3.number_input("Epochs", 1, 200, min(recipe.epochs, 10), key=f"front_epochs_{model}")
        t1, t2, t3 = st.columns(3)
        names = list(TASKS)
        a = t1.selectbox("Task A", names, index=names.index(recipe.tasks[0]), key=f"front_a_{model}")
        b = t2.selectbox("Task B", names, index=names.index(recipe.tasks[1]), key=f"front_b_{model}")
        k = t3.number_input("Weightings (points)", 2, 11, 5, key="front_points")
        methods = st.multiselect(
            "Also these methods, one point each",
            [w for w in weightings_for(model) if w != "static"],
            format_func=lambda n: WEIGHTINGS[n].title,
            key=f"front_methods_{model}",
        )
        if st.button("▶ Queue the sweep", key="front_queue", type="primary"):
            sweep = uuid.uuid4().hex[:6]
            try:
                base = recipe.replace(
                    data=st.session_state[f"front_data_{model}"], epochs=int(st.session_state[f"front_epochs_{model}"])
                )
                points = sweep_configs(base, (a, b), int(k), tuple(methods), sweep)
                get_runner().submit_many(
                    [c for _, c in points], owner_id(), [label for label, _ in points], client=client_address()
                )
            except (QueueFull, StoreUnavailable, ValueError) as exc:  # ConfigError is a ValueError
                st.warning(str(exc))
            else:
                st.session_state["front_source"] = sweep
                st.success(f"Queued {len(points)} runs (sweep {sweep}). Their points appear below as they finish.")


def front_ui(selected: list[dict]) -> None:
    if run_id := st.session_state.pop("front_open", None):
        st.session_state["watch_select"] = run_id
        st.switch_page("pages/train.py")
    start_sweep_ui()
    found = sweeps(visible_runs())
    source = st.selectbox(
        "Points",
        [SELECTED, *found],
        format_func=lambda s: (
            "the runs selected above"
            if s == SELECTED
            else f"sweep {s}: {len(found[s])} runs, {MODELS[found[s][0]['model']].title}"
        ),
        key="front_source",
    )
    if source == SELECTED:
        _front_view(selected)
    elif any(r["status"] in ACTIVE for r in found[source]):
        _live_front_view(source)  # refreshes itself until the sweep's last point is over
    else:
        _front_view(found[source])


@st.fragment(run_every=2)
def _live_front_view(source: str) -> None:
    """A sweep still training, read afresh every 2 s; once its last point is over, one whole-page rerun
    draws it as a still view (nothing polls a finished sweep)."""
    pool = sweeps(visible_runs()).get(source, [])
    if not any(r["status"] in ACTIVE for r in pool):
        st.rerun(scope="app")
    _front_view(pool)


def _front_view(pool: list[dict]) -> None:
    """The chart of the runs' points and its table."""
    training = [r for r in pool if r["status"] in ACTIVE]
    common = [t for t in (pool[0]["config"]["tasks"] if pool else []) if all(t in r["config"]["tasks"] for r in pool)]
    if len(common) < 2:
        st.info("Choose runs that answer at least two of the same tasks (or start a sweep above).")
        return
    c1, c2 = st.columns(2)
    a = c1.selectbox("Across", common, index=0, key="front_x")
    b = c2.selectbox("Up", [t for t in common if t != a], index=0, key="front_y")
    points = front(pool, (a, b))
    by_id = {r["id"]: r for r in pool}
    names = [_point_name(by_id[p.run_id], p) for p in points]
    if points:
        st.plotly_chart(
            pareto_chart(points, (a, b), names),
            key="front_chart",
            on_select=_open_point,
            selection_mode="points",
            width="stretch",
        )
        hv = hypervolume([(p.accuracy[a] / 100, p.accuracy[b] / 100) for p in points])
        st.caption(
            f"Hypervolume **{hv:.4f}**: the share of the ({a}, {b}) accuracy square that the points dominate; "
            "a front further out has a larger one. Solid points: no other point is better on both tasks; "
            "hollow: another one is. Click a point to open its run."
        )
        table = [
            {"point": n, f"{a} %": round(p.accuracy[a], 2), f"{b} %": round(p.accuracy[b], 2),
             "on the front": "yes" if not p.dominated else "no", "run": run_label(by_id[p.run_id])}
            for p, n in zip(points, names)
        ]  # fmt: skip
        st.dataframe(pd.DataFrame(table), hide_index=True, width="stretch")
    if training:
        st.caption(f"⏳ {len(training)} of {len(pool)} points still training: this view updates as they finish.")
    elif not points:
        st.info(f"None of these runs has finished with both {md_escape(a)} and {md_escape(b)}.")


def _point_name(run: dict, point) -> str:
    if point.method != "static":
        return WEIGHTINGS[point.method].title.split(" (")[0]
    return " / ".join(f"{w:g}" for w in point.weights.values())
