"""The Pareto front on the Compare page: start a sweep of loss weights on two tasks, then see its runs as
points (task A's accuracy against task B's), the front, and its hypervolume; a click on a point opens its
run. While a sweep trains, the view refreshes itself as its points finish.

In class mode the teacher opens the sweep to the class instead of queueing it: each student's "Train the
next point" queues the next point nobody has yet as that student's run (RunStore.claim_sweep_point), and
the projector's front fills in as the class's points finish."""

from __future__ import annotations

import re
import uuid

import pandas as pd
import streamlit as st

from dashboard.charts import pareto_chart
from dashboard.classroom import is_teacher, visible_runs
from dashboard.forms import SOURCE_NAMES
from dashboard.state import client_address, get_runner, get_store, owner_id, rerun_app
from dashboard.text import md_escape
from mtl_core.analysis import run_label
from mtl_core.config import TrainConfig, weightings_for
from mtl_core.data import SOURCES
from mtl_core.jobs.runner import QueueFull
from mtl_core.models import MODELS, shares_parameters
from mtl_core.pareto import LABEL, front, hypervolume, sweep_configs
from mtl_core.store.runs import ACTIVE, StoreUnavailable
from mtl_core.tasks import TASKS
from mtl_core.weighting import WEIGHTINGS

SWEEP = re.compile(rf"^{LABEL} ([0-9a-f]{{6}}): ")
SELECTED = ""  # the source "the runs selected above"


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
        for_class = is_teacher() and st.checkbox(
            "For the class: each student's ▶ Train the next point trains one point",
            key="front_for_class",
            help="Nothing is queued now: the students' pages offer the sweep, and every Start takes the next "
            "point nobody has yet. The front here fills in as their points finish (for a projector).",
        )
        if st.button("▶ Open the sweep to the class" if for_class else "▶ Queue the sweep", key="front_queue",
                     type="primary"):  # fmt: skip
            sweep = uuid.uuid4().hex[:6]
            try:
                base = recipe.replace(
                    data=st.session_state[f"front_data_{model}"], epochs=int(st.session_state[f"front_epochs_{model}"])
                )
                points = sweep_configs(base, (a, b), int(k), tuple(methods), sweep)
                if for_class:
                    get_store().open_sweep(sweep, [(label, c.to_dict()) for label, c in points], owner_id())
                else:  # more points than a student's cap: the rest wait their turn
                    _, now = get_runner().queue_in_turn(points, owner_id(), client_address())
            except (StoreUnavailable, ValueError) as exc:  # ConfigError is a ValueError
                st.warning(str(exc))
            else:
                st.session_state["front_source"] = sweep
                if for_class:
                    done = f"Opened to the class: {len(points)} points"
                else:
                    later = f" (the other {len(points) - len(now)} as yours end)" if len(now) < len(points) else ""
                    done = f"Queued {len(now)} of {len(points)} points{later}"
                st.success(f"{done} (sweep {sweep}). They appear below as they finish.")


def class_sweep_ui() -> None:
    """For a student: the teacher's open sweeps that still have a point nobody trains, each with one button
    that queues the next point as this student's run."""
    for sweep in get_store().open_sweeps():
        left = len(sweep["points"]) - sweep["taken"]
        if left <= 0:
            continue
        config = sweep["points"][0][1]
        tasks = " against ".join(config["tasks"])
        c1, c2 = st.columns([3, 1])
        c1.info(
            f"🧪 Your teacher's sweep {sweep['id']}: {MODELS[config['model']].title}, {md_escape(tasks)} on "
            f"{config['data']}, {left} of {len(sweep['points'])} points still to train. Train one, and the "
            "class's front grows by a point."
        )
        if c2.button("▶ Train the next point", key=f"sweep_claim_{sweep['id']}", type="primary"):
            try:
                run_id = get_runner().claim_sweep_point(sweep["id"], owner_id(), client_address())
            except (QueueFull, StoreUnavailable) as exc:
                st.warning(str(exc))
            else:
                if run_id is None:
                    st.info("Every point of this sweep is taken already.")
                else:
                    st.session_state["watch_select"] = run_id
                    st.success("Queued your point. Watch it on the Train page; the front is on Compare.")


def front_ui(selected: list[dict]) -> None:
    if run_id := st.session_state.pop("front_open", None):
        st.session_state["watch_select"] = run_id
        st.switch_page("pages/train.py")
    start_sweep_ui()
    class_sweep_ui()
    found = sweeps(visible_runs())
    open_ids = {sweep["id"] for sweep in get_store().open_sweeps()}
    if open_ids:  # a class's sweep: every student's points are the class's front
        everyone = sweeps(get_store().list_runs(None))
        found |= {sweep_id: everyone.get(sweep_id, []) for sweep_id in open_ids}
    source = st.selectbox(
        "Points",
        [SELECTED, *found],
        format_func=lambda s: "the runs selected above" if s == SELECTED else _sweep_words(s, found[s]),
        key="front_source",
    )
    if source == SELECTED:
        _front_view(selected)
    else:
        if (
            source in open_ids
            and is_teacher()
            and st.button("■ Close the sweep to the class", key=f"sweep_close_{source}")
        ):
            get_store().close_sweep(source)
            open_ids.discard(source)
        if source in open_ids or any(r["status"] in ACTIVE for r in found[source]):
            _live_front_view(source)  # refreshes itself while points train (or, for a class, may come)
        else:
            _front_view(found[source])


def _sweep_words(sweep_id: str, runs: list[dict]) -> str:
    if not runs:
        return f"sweep {sweep_id}: open to the class, no point taken yet"
    return f"sweep {sweep_id}: {len(runs)} runs, {MODELS[runs[0]['model']].title}"


def class_points(sweep_id: str) -> list[dict]:
    """Every student's runs of a class sweep (their labels name it)."""
    return sweeps(get_store().list_runs(None)).get(sweep_id, [])


@st.fragment(run_every=2)
def _live_front_view(source: str) -> None:
    """A sweep still training, read afresh every 2 s; once its last point is over (and a class's sweep is
    closed), one whole-page rerun draws it as a still view (nothing polls a finished sweep)."""
    open_ids = {s["id"] for s in get_store().open_sweeps()}
    pool = class_points(source) if source in open_ids else sweeps(visible_runs()).get(source, [])
    if source not in open_ids and not any(r["status"] in ACTIVE for r in pool):
        rerun_app()  # never over a student's click (dashboard/state.py)
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
    names = [_point_name(p) for p in points]
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


def _point_name(point) -> str:
    if point.method != "static":
        return WEIGHTINGS[point.method].title.split(" (")[0]
    return " / ".join(f"{w:g}" for w in point.weights.values())
