"""The sidebar every page shares: problems of the server, your name, the teacher's switches, the queue."""

from __future__ import annotations

import streamlit as st

from dashboard.classroom import is_teacher, name_ui, teacher_ui, unlock_from_url
from dashboard.identity import cookie_writer, identity_ui, move_ui
from dashboard.state import (
    data_label,
    get_runner,
    get_store,
    has_waiting_work,
    note_presence,
    owner_id,
    read_if_changed,
    rerun_app,
    seen_every_s,
)
from mtl_core.store.runs import ACTIVE


def jobs_sentence(active: list[dict]) -> str:
    """The sidebar's count of the server's queued and running runs. A run paused for another student's
    (fair share) holds no worker, so it is counted apart, not as running."""
    paused = sum(r["status"] == "running" and bool(r.get("yield_requested")) for r in active)
    running = sum(r["status"] == "running" for r in active) - paused
    held = f", {paused} paused for others" if paused else ""
    return f"Jobs on this server: {running} running{held}, {len(active) - running - paused} queued"


def jobs_caption_ui() -> None:
    st.caption(jobs_sentence(get_store().list_runs(statuses=ACTIVE)))


def waiting_turns_ui() -> None:
    """Your runs that wait their turn (a table or a sweep longer than your cap on jobs), with a way to drop
    them; the runs already queued stay."""
    cap = get_runner().limits.per_owner
    for turn in get_store().waiting_turns(owner_id()):
        n = len(turn["waiting"])
        st.caption(
            f"{n} more of your runs wait their turn: at most {cap} of yours are queued or train at once, and "
            "they join the queue as yours end."
        )
        if st.button(f"Drop the {n} waiting runs", key=f"turn_drop_{turn['id']}"):
            get_store().cancel_turn(turn["id"])
            rerun_app()


def _keep_present() -> None:
    note_presence()


TEACHER_POLL_S = 1.0  # the teacher's lists and counters follow the class within about a second


def class_overview() -> tuple:
    """Every run's id, status, label, flags and student (RunStore.overview), read again only when the
    store's change counter moved."""
    return read_if_changed("_class_overview", get_store().overview)


@st.fragment(run_every=TEACHER_POLL_S)
def _follow_the_class() -> None:
    """The teacher's page, whichever it is, redraws when a run of the class is queued, starts, stops,
    finishes, is deleted, renamed or paused: the run lists, the counters and the run's status stay live
    without a click. Epochs alone do not redraw it (the watched run's panel follows those itself)."""
    if class_overview() != st.session_state.get("_class_drawn"):
        rerun_app()


def sidebar_ui() -> None:
    identity_ui()
    unlock_from_url()
    runner = get_runner()
    note_presence()
    every = seen_every_s()
    if every and has_waiting_work(owner_id()):  # an open tab keeps its queued runs, whichever page it shows
        st.fragment(_keep_present, run_every=every)()
    if is_teacher():
        st.session_state["_class_drawn"] = class_overview()
        _follow_the_class()
    with st.sidebar:
        cookie_writer()  # first, so a new identity's cookie is set before anything slow runs
        # What happened to the store, with file names, is the teacher's; students get a plain sentence.
        notice = runner.store.notice if is_teacher() else runner.store.public_notice
        if notice:
            st.warning(notice)
        if runner.problem:
            st.error(runner.problem)
        if not runner.has_pool and not runner.store.read_only:
            st.info("Another dashboard server on this folder trains the jobs; this one queues and shows them.")
        name_ui()
        move_ui()
        teacher_ui()
        jobs_caption_ui()
        waiting_turns_ui()
        st.caption(f"Data: {data_label(detail=is_teacher())}")
