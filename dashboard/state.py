"""Per-browser identity, the shared run store and job runner, cached read-only data, the sidebar."""

from __future__ import annotations

import os
import re
import uuid

import streamlit as st

from mtl_core.checkpoint import load_model
from mtl_core.data import MTLData, load_data
from mtl_core.jobs import JobRunner
from mtl_core.runs import RunStore


@st.cache_resource
def get_store() -> RunStore:
    return RunStore()


@st.cache_resource
def get_runner() -> JobRunner:
    """One runner per server: its worker processes train every user's jobs, one at a time by default."""
    return JobRunner(get_store(), workers=max(1, int(os.environ.get("MTL_WORKERS", "1"))))


@st.cache_resource(show_spinner="Loading digits…")
def get_data(source: str) -> MTLData:
    """Read-only dataset tensors, shared by every session (style rule 10)."""
    return load_data(source)


@st.cache_resource(max_entries=32, show_spinner=False)
def get_model(path: str, mtime: float):
    """A finished run's model; files never change after a run ends (mtime guards a re-save)."""
    return load_model(path)


def has_model(run: dict) -> bool:
    """A saved model that is still on disk (another tab may have deleted the run meanwhile)."""
    path = run.get("weights_path")
    return bool(path) and os.path.exists(path)


def model_of(run: dict):
    path = run["weights_path"]
    return get_model(path, os.path.getmtime(path))


def owner_id() -> str:
    """A per-browser id kept in the URL (?u=...), so a reload or a page switch keeps your runs."""
    if "owner" not in st.session_state:
        given = st.query_params.get("u", "")
        st.session_state.owner = given if re.fullmatch(r"[0-9a-f]{12}", given) else uuid.uuid4().hex[:12]
    if st.query_params.get("u") != st.session_state.owner:
        st.query_params["u"] = st.session_state.owner
    return st.session_state.owner


def show_all() -> bool:
    return bool(st.session_state.get("show_all_runs", False))


def visible_runs(statuses: tuple[str, ...] | None = None) -> list[dict]:
    """This browser's runs, or everyone's in the teacher view."""
    return get_store().list_runs(owner=None if show_all() else owner_id(), statuses=statuses)


def data_label(source: str = "auto") -> str:
    try:
        return get_data(source).describe()
    except Exception as exc:  # noqa: BLE001 - shown, never raised
        return f"unavailable: {exc}"


# Widgets whose values should survive a visit to another page. Streamlit forgets a widget's value
# when a run does not draw it; saving the value back into session state each run keeps it.
KEPT_WIDGETS = ("train_model", "stroke_width")
KEPT_PREFIXES = ("f_",)  # the training form's fields (their keys end with the model name)


def keep_widget_values() -> None:
    for key in list(st.session_state):
        if key in KEPT_WIDGETS or key.startswith(KEPT_PREFIXES):
            st.session_state[key] = st.session_state[key]


@st.fragment(run_every=3)
def _jobs_caption() -> None:
    get_runner().ensure_workers()  # replaces a worker that died and fails the run it left behind
    active = get_store().list_runs(statuses=("queued", "running"))
    running = sum(r["status"] == "running" for r in active)
    st.caption(f"Jobs on this server: {running} running, {len(active) - running} queued")


def sidebar_ui() -> None:
    owner_id()
    get_runner()  # start the workers with the first page view, so jobs queued before a restart resume
    with st.sidebar:
        st.toggle(
            "Show all runs on this server",
            key="show_all_runs",
            help="Teacher / projector view: everyone's runs instead of this browser's.",
        )
        _jobs_caption()
        st.caption(f"Data: {data_label()}")
