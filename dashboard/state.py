"""The browser's owner id, the shared run store and job runner, cached read-only data."""

from __future__ import annotations

import os
import time

import streamlit as st

from mtl_core.checkpoint import load_model
from mtl_core.data import MTLData, load_data, make_multimnist
from mtl_core.jobs.runner import JobRunner, server_runner
from mtl_core.store.runs import ACTIVE, RunStore, StoreUnavailable


def get_runner() -> JobRunner:
    """This server's one runner (`mtl_core.jobs.runner.server_runner`): not a Streamlit cache, so clearing
    the caches can never start a second pool. `python -m dashboard.serve` starts it before any page."""
    return server_runner()


def get_store() -> RunStore:
    return get_runner().store


def client_address() -> str:
    """The browser's network address, so one person's many tabs share one cap."""
    try:
        address = st.context.ip_address
    except Exception:  # noqa: BLE001 - AppTest has no connection
        return ""
    return address if isinstance(address, str) else ""


@st.cache_resource(show_spinner="Loading digits…")
def get_data(source: str) -> MTLData:
    """Read-only dataset tensors, shared by every session (style rule 10). MultiMNIST is built from the
    digits "auto" already holds, not from a second copy of them."""
    if source == "multimnist":
        return make_multimnist(get_data("auto"))
    return load_data(source)


@st.cache_resource(max_entries=32, show_spinner=False)
def get_model(path: str, mtime: float):
    """A finished run's model; files never change after a run ends (mtime guards a re-save)."""
    return load_model(path)


def has_model(run: dict) -> bool:
    """A run that is over and whose saved model is still on disk (another tab may have deleted it).
    A training run already has its best-so-far weights on disk; they are used once it ends."""
    path = run.get("weights_path")
    # Only the file the numbers beside it describe: after a failed save it may hold an earlier epoch.
    held = run.get("weights_epoch")
    return run["status"] not in ACTIVE and bool(path) and os.path.exists(path) and held in (None, run.get("best_epoch"))


def model_of(run: dict):
    path = run["weights_path"]
    return get_model(path, os.path.getmtime(path))


def owner_id() -> str:
    """This browser's identity: a hash of the secret in its signed cookie (dashboard/identity.py), so a
    reload, a new tab or a restart keeps your runs and nothing on a screen or in a link can claim them."""
    if "owner" not in st.session_state:
        from dashboard.identity import start_identity  # it imports this module

        start_identity()
    return st.session_state.owner


def data_label(source: str = "auto", detail: bool = False) -> str:
    """The data in one line; server paths and raw errors only with `detail` (the teacher's view)."""
    try:
        return get_data(source).describe(detail=detail)
    except Exception as exc:  # noqa: BLE001 - shown, never raised
        return f"unavailable: {exc}" if detail else "unavailable on this server"


def full_mnist_here() -> bool:
    """Whether "full MNIST" can train here now ("auto" found it cached or downloaded it)."""
    try:
        return get_data("auto").source == "mnist"
    except Exception:  # noqa: BLE001 - then it cannot
        return False


# Widgets whose values should survive a visit to another page. Streamlit forgets a widget's value
# when a run does not draw it; saving the value back into session state each run keeps it.
KEPT_WIDGETS = ("train_model", "stroke_width")
KEPT_PREFIXES = ("f_",)  # the training form's fields (their keys end with the model name)


def keep_widget_values() -> None:
    for key in list(st.session_state):
        if key in KEPT_WIDGETS or key.startswith(KEPT_PREFIXES):
            st.session_state[key] = st.session_state[key]


SEEN_EVERY_S = 120  # at most this long between two notes that a tab is still open


def seen_every_s() -> float:
    """How often an open tab with runs waiting tells the store it is still there: a quarter of the time after
    which a closed tab's queued runs are cancelled (MTL_ABANDON_MINUTES, 10 by default), at most every
    SEEN_EVERY_S; 0 when they never are (nothing to keep). Each note from a polling tab is a script rerun,
    which costs the student's browser a redraw of the page (benchmarks/watch_cpu.py)."""
    abandon_s = get_runner().settings.abandon_s
    return min(SEEN_EVERY_S, max(1.0, abandon_s / 4)) if abandon_s > 0 else 0.0


def has_waiting_work(owner: str) -> bool:
    """Whether `owner` has what a closed tab would lose (RunStore.cancel_abandoned): runs queued, or runs
    still waiting their turn. A run in training is never cancelled that way."""
    store = get_store()
    return bool(store.list_runs(owner=owner, statuses=("queued",)) or store.waiting_turns(owner))


def note_presence() -> None:
    """Tell the store this browser is still here (at most every `seen_every_s()`), so its queued runs are
    kept."""
    now = time.monotonic()
    if now - st.session_state.get("_seen_at", -1e9) >= (seen_every_s() or SEEN_EVERY_S):
        st.session_state["_seen_at"] = now
        try:
            get_store().touch_owner(owner_id())
        except StoreUnavailable:
            pass  # a read-only or full disk: the sidebar says so; viewing goes on


def read_if_changed(key: str, read):
    """`read()`'s value, read again only when the store's change counter has moved since the last
    call with this key: a polling page costs one tiny query while nothing happens."""
    version = get_store().version()
    cached = st.session_state.get(key)
    if cached is not None and cached[0] == version:
        return cached[1]
    value = read()
    st.session_state[key] = (version, value)
    return value


def full_rerun_pending(requests=None) -> bool:
    """Whether a rerun of the whole app is already queued for this session (the student clicked a page
    link or a button while a fragment was running). Reads Streamlit's request queue, which has no public
    reader; tests/test_dashboard_helpers.py checks it against the pinned Streamlit's own classes."""
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    if requests is None:
        requests = getattr(get_script_run_ctx(), "script_requests", None)
    try:
        with requests._lock:
            return _full_rerun_queued(requests)
    except AttributeError:  # no session (bare mode), or Streamlit changed its internals: rerun as before
        return False


def _full_rerun_queued(requests) -> bool:
    """`full_rerun_pending` with the queue's lock already held."""
    from streamlit.runtime.scriptrunner_utils.script_requests import ScriptRequestType

    data = requests._rerun_data
    return requests._state == ScriptRequestType.RERUN and not (
        data.fragment_id or data.fragment_id_queue or data.is_fragment_scoped_rerun
    )


def request_app_rerun(requests, rerun_data) -> bool:
    """Queue `rerun_data` (a rerun of the whole app on this page) unless a rerun of the whole app is queued
    already: the check and the queueing under the queue's own lock, so a click that lands in between cannot
    be overridden (Streamlit merges queued reruns, and the newest request's page wins). True: queued."""
    with requests._lock:
        if _full_rerun_queued(requests):
            return False
        return requests._request_rerun_locked(rerun_data)


def rerun_app() -> None:
    """A polling fragment's `st.rerun(scope="app")` when what it watches changed, unless the student's
    own rerun is already on its way: ours would take a student who just clicked away back to this page
    (benchmarks/load.py caught it). The student's rerun redraws everything anyway."""
    from streamlit.runtime.scriptrunner import get_script_run_ctx
    from streamlit.runtime.scriptrunner_utils.script_requests import RerunData

    ctx = get_script_run_ctx()
    requests = getattr(ctx, "script_requests", None)
    if requests is None or not hasattr(requests, "_request_rerun_locked"):
        st.rerun(scope="app")  # bare mode, or another Streamlit: as before
        return
    # What st.rerun(scope="app") asks for (streamlit/commands/execution_control.py), queued atomically.
    data = RerunData(query_string=ctx.query_string, page_script_hash=ctx.page_script_hash,
                     cached_message_hashes=ctx.cached_message_hashes, context_info=ctx.context_info)  # fmt: skip
    if request_app_rerun(requests, data):
        st.empty()  # a yield point: the script runner acts on the queued rerun here, as st.rerun does


def guard_page_switches() -> None:
    """A fragment's rerun that reaches the server after a click on another page must not take the student
    back. Streamlit 1.67 folds queued reruns into one, and the newest request's page and address win, even
    when the newest is a fragment's timed rerun or a progress line's trigger sent by the page being left:
    the load benchmark's class lost a page switch that way. With this guard, a fragment's request folded
    into a queued rerun of the whole app keeps that rerun's page, address and kind; everything else is
    folded as Streamlit folds it (widget values included). The fold is Streamlit's own method, wrapped
    once per process (app.py calls this on each run; tests/test_dashboard_helpers.py pins the behaviour)."""
    from dataclasses import replace

    from streamlit.runtime.scriptrunner_utils.script_requests import ScriptRequests

    fold = getattr(ScriptRequests, "_request_rerun_locked", None)
    if fold is None or getattr(fold, "keeps_page_switch", False):
        return

    def fold_keeping_the_page(self, new_data):  # noqa: ANN001, ANN202 - Streamlit's own signature
        try:
            pending = self._rerun_data if _full_rerun_queued(self) else None
        except AttributeError:  # another Streamlit: fold as it does
            pending = None
        folded = fold(self, new_data)
        if folded and pending is not None and (new_data.fragment_id or new_data.fragment_id_queue):
            self._rerun_data = replace(
                self._rerun_data,
                page_script_hash=pending.page_script_hash,
                page_name=pending.page_name,
                query_string=pending.query_string,
                context_info=pending.context_info,
                is_auto_rerun=pending.is_auto_rerun,
            )
        return folded

    fold_keeping_the_page.keeps_page_switch = True  # type: ignore[attr-defined]
    ScriptRequests._request_rerun_locked = fold_keeping_the_page
