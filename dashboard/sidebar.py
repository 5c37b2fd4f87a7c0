"""The sidebar every page shares: problems of the server, your name, the teacher's switches, the queue."""

from __future__ import annotations

import streamlit as st

from dashboard.classroom import is_teacher, name_ui, teacher_ui, unlock_from_url
from dashboard.identity import cookie_writer, identity_ui, move_ui
from dashboard.state import SEEN_EVERY_S, data_label, get_runner, get_store, note_presence, owner_id
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


@st.fragment(run_every=SEEN_EVERY_S)
def _keep_present() -> None:
    note_presence()


def sidebar_ui() -> None:
    identity_ui()
    unlock_from_url()
    runner = get_runner()
    note_presence()
    if get_store().list_runs(owner=owner_id(), statuses=ACTIVE):
        _keep_present()  # an open tab keeps its queued runs, whichever page it shows
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
        st.caption(f"Data: {data_label(detail=is_teacher())}")
