"""Live view of one run: status, progress with ETA, Stop, curves. While the run trains, the browser keeps
its progress line live (dashboard/live.py), which asks for the view to be drawn again when the run's state
changes or new epochs are due on the charts; without that route, fragments poll."""

from __future__ import annotations

import functools
import os
import time

import streamlit as st

from dashboard.charts import affinity_heatmap, conflict_chart, overlay, training_curves
from dashboard.classroom import can_download, can_manage, is_teacher
from dashboard.forms import load_into_form, share_link_ui
from dashboard.live import progress_line, progress_state, running_line, served
from dashboard.state import (
    client_address,
    get_data,
    get_runner,
    get_store,
    has_model,
    note_presence,
    owner_id,
    read_if_changed,
    rerun_app,
)
from dashboard.text import md_escape
from mtl_core.analysis import data_source, run_affinity, run_label, suggest_grouping
from mtl_core.config import TrainConfig
from mtl_core.export import SUFFIXES, export_file_bytes, spec_words
from mtl_core.jobs.estimate import duration_words, queue_spot, run_estimate
from mtl_core.settings import env_float
from mtl_core.store.runs import ACTIVE, STOPPED_BY_TEACHER, QueueFull, StoreUnavailable
from mtl_core.weighting import WEIGHTINGS

# While the watched run trains and the server has no progress route (dashboard/live.py; plain `streamlit
# run`, AppTest): an epoch takes 0.2 s to minutes; 2 s reads as live.
POLL_S = 2.0
QUEUED_POLL_S = 3.0  # while it waits in the queue
# While it trains, the charts and the epoch numbers take new epochs at most this often (the progress bar
# every 2 s): redrawing them each 2 s cost a watching tab about 15 % of a core in Chromium
# (benchmarks/watch_cpu.py); a chart that grows every 15 s is still one a person can follow.
# MTL_CHART_EVERY_S sets another pace (the browser tests use 3 s, to see a curve grow without waiting).
CHART_EVERY_S = env_float("MTL_CHART_EVERY_S", 15.0, 1.0, 600.0)
# The diagnostics beside the curves (gradient agreement, task affinity, gates, task weights) take new
# epochs at a quarter of that pace while the run trains, and at once when it ends. A chart whose figure
# changed is mounted again in the browser (Streamlit 1.67 builds a changed Plotly chart anew), which cost a
# watching tab of a 4-task CNN about 0.65 CPU-seconds a redraw for its three charts; one left as it was
# costs nothing. The affinity is an average over all of training and moves slowly by nature.
DIAGNOSTICS_EVERY_S = 4 * CHART_EVERY_S
# Our own style rule, no user text in it: the progress bar jumps to its new width instead of animating
# there; the animation repainted the page for a while after every 2-s poll (about 1.5 % of a core a tab).
STILL_PROGRESS_CSS = "<style>[data-testid='stProgress'] * {transition: none !important;}</style>"


def _epochs(n: int) -> str:
    return f"{n} epoch" + ("" if n == 1 else "s")


def queue_ui(run: dict) -> None:
    source = data_source(run)
    try:
        n_train = get_data(source).n_train
    except Exception:  # noqa: BLE001 - the worker will say why the data is missing
        n_train = 60_000
    spot = queue_spot(get_store(), run, get_runner().n_workers, source, n_train)
    length = run_estimate(get_store(), run["config"], source, n_train)
    if spot.position == 1 and spot.wait_s < 1:
        st.info(f"Queued: starting now. It should take {length.words()}.")
        return
    guess = "" if spot.measured else " (a rough guess: nothing like it has run on this server yet)"
    st.info(
        f"Queued: {spot.position - 1} {'job' if spot.position == 2 else 'jobs'} ahead of this one; it should start "
        f"in {duration_words(spot.wait_s)} and take {length.words()}{guess}. Runs take turns across students."
    )


def status_ui(run: dict, records: list[dict]) -> None:
    total = run["config"]["epochs"]
    status = run["status"]
    done = len(records)
    if status == "queued":
        queue_ui(run)
    elif status == "running":
        _, per, within = _running_numbers(run, records)
        fraction, text = running_line(done, total, within, per)
        st.progress(fraction, text=text)
        if run.get("yield_requested"):  # fair share (JobRunner.share_workers): it waits in memory, not queued
            st.info("Paused so another student's run could start; it resumes by itself where it stopped.")
    elif status == "finished":
        n_val = run["config"].get("val_split", 0)
        if n_val:
            test = f"; on the test set, scored once after: average {run['best_avg']:.2%}" if run["best_avg"] else ""
            picked = f"picked on {n_val:,} held-out training digits{test}"
        else:
            picked = "picked on the test set, as the reference studies do"
        patience = run["config"].get("patience", 0)
        if patience and done < total:  # done: the epochs recorded
            ran = f"Finished after {done} of {total} epochs (stopped early: no better score in {patience})"
        else:
            ran = f"Finished all {_epochs(total)}"
        st.success(
            f"{ran} in {run['train_seconds'] or 0:.1f} s; best epoch {run['best_epoch']} "
            f"({picked})." + (f" Note: {md_escape(run['reason'])}." if run["reason"] else "")
        )
    elif status == "cancelled" and run.get("stop_requested") == STOPPED_BY_TEACHER and done == 0:
        st.warning(f"{_teacher_stopped(run)} before its first epoch finished; there is no model to keep.")
    elif status == "cancelled" and done == 0:
        st.warning(f"Stopped before any epoch finished ({md_escape(run['reason'])}); there is no model to keep.")
    elif status == "cancelled" and run.get("stop_requested") == STOPPED_BY_TEACHER:
        kept = f"the weights of its best epoch ({run['best_epoch']})" if run["best_epoch"] else "no weights"
        st.warning(f"{_teacher_stopped(run)} after {_epochs(done)} of {total}. The curve and {kept} are kept.")
    elif status in ("cancelled", "interrupted"):
        what = "Stopped" if status == "cancelled" else "Interrupted"
        kept = f"the weights of its best epoch ({run['best_epoch']})" if run["best_epoch"] else "no weights"
        why = md_escape(run["reason"])
        st.warning(f"{what} after {_epochs(done)} of {total}: {why}. The curve and {kept} are kept.")
    else:  # failed or diverged
        st.error(f"{status.capitalize()}: {md_escape(run['reason'])}")


def _running_numbers(run: dict, records: list[dict]) -> tuple[int, float, float]:
    """A training run's epochs done, mean seconds per epoch so far, and the fraction of the next one done."""
    within = get_store().within_epoch(run["id"]) or 0.0  # read on every draw: heartbeats are no change
    done = len(records)
    return done, sum(r["seconds"] for r in records) / done if done else 0.0, within


def _teacher_on_a_students_run(run: dict) -> bool:
    """The person looking is the teacher, and the run is a student's."""
    return is_teacher() and run.get("owner") != owner_id()


def _teacher_stopped(run: dict) -> str:
    """Who stopped a run the teacher stopped, as the person looking reads it."""
    if _teacher_on_a_students_run(run):
        return "You stopped this student's run (teacher)"
    return "Your teacher stopped this run"


def metrics_ui(run: dict, records: list[dict]) -> None:
    """The latest epoch's numbers, three to a row so long task lists still fit."""
    if not records:
        return
    last = records[-1]
    items = [("Parameters", f"{run['params']:,}" if run["params"] else "-")]
    held_out = last.get("split") == "validation"  # the epochs are scored on held-out training digits
    if last["avg_acc"] is not None:
        items.append(("Average acc (validation)" if held_out else "Average acc", f"{last['avg_acc']:.2%}"))
    for task, m in last["metrics"].items():
        items.append((task, f"{m['acc']:.2%}" if "acc" in m else f"MAE {m['mae_digits']:.2f}"))
    for start in range(0, len(items), 3):
        for col, (label, value) in zip(st.columns(3), items[start : start + 3]):
            col.metric(label, value)


@functools.lru_cache(maxsize=4)  # a plain cache: the download callable runs outside the script's thread
def _exported(path: str, mtime: float, fmt: str) -> bytes:
    return export_file_bytes(path, fmt)


def model_downloads_ui(run: dict) -> None:
    """The model as safetensors (the file itself), TorchScript and ONNX. The two exports are made only
    when their button is clicked (a callable as the data), not on every redraw of the page."""
    path, stem = run["weights_path"], f"{run['model']}-{run['id']}"
    with open(path, "rb") as f:
        st.download_button(
            "⬇ Model (.safetensors)",
            f.read(),
            f"{stem}{SUFFIXES['safetensors']}",
            "application/octet-stream",
            key=f"dl_model_{run['id']}",
            width="stretch",
        )
    mtime = os.path.getmtime(path)
    for fmt, name in (("torchscript", "TorchScript"), ("onnx", "ONNX")):
        st.download_button(
            f"⬇ {name} ({SUFFIXES[fmt]})",
            functools.partial(_exported, path, mtime, fmt),
            f"{stem}{SUFFIXES[fmt]}",
            "application/octet-stream",
            key=f"dl_{fmt}_{run['id']}",
            width="stretch",
        )
    st.caption(
        "TorchScript and ONNX run without this code (torch.jit.load, onnxruntime). "
        f"{spec_words(run['model'], run['config']['tasks'])} Both files carry this in their metadata."
    )


def older_model_note(run: dict) -> str:
    """Why a run's model file is not offered when it holds an earlier epoch than the best one shown."""
    held, best, path = run.get("weights_epoch"), run.get("best_epoch"), run.get("weights_path")
    if held is None or held == best or not path or not os.path.exists(path):
        return ""
    record = next((r for r in get_store().epochs(run["id"]) if r.get("epoch") == held), {})
    acc = f" ({record['avg_acc']:.2%})" if record.get("avg_acc") is not None else ""
    return (
        f"The model file holds epoch {held}{acc}, not the best epoch {best}: the best epoch's weights could not "
        "be saved, so no model is offered for this run."
    )


def run_actions_ui(run: dict) -> None:
    """For a run that is over: download its model, delete it (only its owner can), train again with its
    settings, or pass them on as a link."""
    c1, c2, c3, c4 = st.columns([2, 2, 2, 2])
    if has_model(run) and can_download(run):
        with c1.popover("⬇ Model"):
            model_downloads_ui(run)
    elif note := older_model_note(run):
        c1.caption(note)
    if can_manage(run):
        # A key per run: without it the popover's open state carried over to the next run shown in this
        # place, and a second click there deleted the wrong run.
        with c2.popover("🗑 Delete run", key=f"delete_pop_{run['id']}"):
            st.markdown(md_escape(f"Delete “{run_label(run)}”?"))
            st.caption("Its curves and its model file go for good.")
            if st.button("Delete", type="primary", key=f"delete_{run['id']}"):
                get_store().delete_run(run["id"])
                st.toast(md_escape(f"Deleted “{run_label(run)}”."))
                st.rerun(scope="app")
    config = TrainConfig.from_dict(run["config"])
    # The callback fills the form before this fragment reruns; the app rerun then draws it.
    if c3.button("↻ Train again", key=f"again_{run['id']}", on_click=load_into_form, args=(config,)):
        st.rerun(scope="app")
    with c4:
        share_link_ui(config, run["id"])


WEIGHTING_HINTS = {
    "uncertainty": "Look for: a task whose weight falls is one the network finds noisy or hard (its learned "
    "uncertainty grew); a rising weight marks a task it can fit well.",
    "dwa": "Look for: a task whose loss fell more slowly than the others last epoch gets more weight this epoch.",
    "gradnorm": "Look for: the weights move so that each task's gradient on the shared layers is about as "
    "large as the others' (larger for a task that trains slowly).",
    "famo": "Look for: the weights shift toward the task whose loss is falling the slowest, so that every "
    "loss falls at about the same rate.",
    "gradients": "Look for: the weight each task's gradient got when the method combined them on the shared "
    "layers; a task far below the others is the one whose gradient conflicted most with the rest.",
}


def affinity_ui(run: dict, records: list[dict]) -> None:
    """The run's task affinity, the grouping it suggests, and (once the run is over) one click to train
    that grouping: one run per group, the same settings on just that group's tasks."""
    affinity = run_affinity(records)
    tasks = run["config"]["tasks"]
    if not affinity or len(tasks) < 2:
        return
    st.plotly_chart(affinity_heatmap(affinity, tasks), key=f"affinity_{run['id']}", width="stretch")
    groups = suggest_grouping(affinity, tasks)
    words = " · ".join("+".join(g) for g in groups)
    st.caption(
        "Row i, column j: how much one step on task i alone lowered task j's loss on the same batch (Fifty et "
        "al., 2021). Tasks that lower each other's losses belong in one network; a task that others do not "
        f"help trains better alone. **Suggested grouping: {words}**"
        + (" (all together, as this run already is)." if len(groups) == 1 else ".")
    )
    if len(groups) > 1 and run["status"] not in ACTIVE:
        st.button(
            "▶ Train the suggested grouping", key=f"grouping_{run['id']}", on_click=_queue_grouping, args=(run, groups)
        )
    if st.session_state.pop("grouping_queued", False):  # the whole page again: the run picker lists them
        st.rerun(scope="app")


def _queue_grouping(run: dict, groups: list[tuple[str, ...]]) -> None:
    """One run per group, the same settings on just that group's tasks; then the Train page watches the first
    (set here, in the click's callback: the run picker above is already drawn when this panel runs)."""
    config = TrainConfig.from_dict(run["config"])
    configs = [
        config.replace(tasks=g, loss_weights={t: w for t, w in config.loss_weights.items() if t in g}) for g in groups
    ]
    labels = [f"grouping of {run['id'][-6:]}: {'+'.join(g)}" for g in groups]
    try:
        ids = get_runner().submit_many(configs, owner_id(), labels, client=client_address())
    except (QueueFull, StoreUnavailable) as exc:
        st.session_state["train_flash"] = ("warning", str(exc))
        return
    st.session_state["watch_select"] = ids[0]
    st.session_state["train_flash"] = (
        "success",
        f"Queued {len(configs)} runs, one per group; compare them with this one on the **Compare** page.",
    )
    st.session_state["grouping_queued"] = True


def gates_ui(run_id: str, records: list[dict]) -> None:
    """MMoE: how much of each shared expert every task's head reads, epoch by epoch."""
    epochs = [r["epoch"] for r in records if r.get("gates")]
    series = {
        f"{task}: expert {e + 1}": (epochs, [r["gates"][task][e] for r in records if r.get("gates")])
        for task, weights in records[-1]["gates"].items()
        for e in range(len(weights))
    }
    st.plotly_chart(
        overlay(series, "Gate weights per task (mean over test digits)", "share of the expert", y_max=1.01),
        key=f"gates_{run_id}",
        width="stretch",
    )
    st.caption(
        "Each task's gate decides how much of each shared expert its head reads. Tasks that lean on different "
        "experts share little; tasks that read the same expert share it, as hard sharing would."
    )


def paced_records(key: str, records: list[dict], training: bool, every_s: float) -> list[dict]:
    """`records` as they were when last taken under `key`, taken again once `every_s` has passed; all of
    them at once when the run is not training, and the first epoch as soon as it is in. Charts built from
    the same records are the same figure, which the browser keeps as it is."""
    now = time.monotonic()
    taken = st.session_state.get(key)
    fresh = taken is None or not taken[1] or not training
    if fresh or (len(records) != len(taken[1]) and now - taken[0] >= every_s):
        taken = (now, records)
        st.session_state[key] = taken
    return taken[1]


def monitor_ui(run_id: str, projector: bool = False) -> None:
    """The watched run, live. `projector`: the curves come right under the status line, before the
    numbers and buttons, so they fit a 1280 x 720 projector without scrolling."""
    store = get_store()
    run = store.get_run(run_id)
    if run is None:
        st.info("That run no longer exists.")
        return
    started_as = run["status"]
    # While it trains, the browser keeps the progress line live itself (dashboard/live.py) where the server
    # offers the route; else (plain `streamlit run`, AppTest) the fragment below polls.
    browser_polls = started_as == "running" and served()
    every = {"running": POLL_S, "queued": QUEUED_POLL_S}.get(started_as)  # the polling fragment's pace

    if started_as == "running" and not browser_polls:
        st.markdown(STILL_PROGRESS_CSS, unsafe_allow_html=True)

    def live() -> bool:
        """The run's name, Stop and status line; false when the run is gone."""
        note_presence()
        run, records = read_if_changed(f"_monitor_{run_id}", lambda: (store.get_run(run_id), store.epochs(run_id)))
        if run is None:
            st.info("That run no longer exists.")
            return False
        if started_as in ACTIVE and run["status"] != started_as:
            # Queued -> running polls faster; running -> over stops polling. Before drawing anything,
            # so the page never shows the old and the new state at once.
            rerun_app()
        if records and not st.session_state.get(f"_first_epoch_{run_id}"):
            # The first epoch is in: the charts below draw it now, not at their next turn (CHART_EVERY_S).
            st.session_state[f"_first_epoch_{run_id}"] = True
            if started_as == "running":
                rerun_app()
        head, stop = st.columns([5, 1])
        where = run["device"] or ("waiting for a worker" if run["status"] == "queued" else "")
        head.markdown(" · ".join(filter(None, [f"**{md_escape(run_label(run))}**", data_source(run), where])))
        if run["status"] in ACTIVE and can_manage(run) and stop.button("⏹ Stop", key="stop_run", width="stretch"):
            try:
                get_runner().stop(run_id, by_teacher=_teacher_on_a_students_run(run))
            except StoreUnavailable as exc:  # read-only, full or lost: the Stop cannot be recorded, say why
                st.warning(f"Stop could not be recorded. {exc}")
            else:
                st.toast("Stopping…")
        if browser_polls and run["status"] == "running":
            progress_line(store, run_id, progress_state(run, *_running_numbers(run, records)), CHART_EVERY_S)
        else:
            status_ui(run, records)  # live every poll: the progress bar shows the run moves
        return True

    def epochs_view() -> None:
        """The epoch numbers and the charts."""
        run, records = read_if_changed(f"_monitor_{run_id}", lambda: (store.get_run(run_id), store.epochs(run_id)))
        if run is None:
            return
        slow = paced_records(f"_diagnostics_{run_id}", records, run["status"] in ACTIVE, DIAGNOSTICS_EVERY_S)
        if not projector:  # on the projector the numbers and buttons go under the curves
            if run["status"] not in ACTIVE:
                run_actions_ui(run)
            metrics_ui(run, records)
        if records:
            # Built again only when an epoch was added: a poll with nothing new builds no figure.
            cached = st.session_state.get(f"_curves_{run_id}")
            if cached is None or cached[0] != len(records):
                cached = (len(records), training_curves(records, run["config"]["epochs"]))
                st.session_state[f"_curves_{run_id}"] = cached
            st.plotly_chart(cached[1], key=f"curves_{run_id}", width="stretch")
            st.caption(
                "Look for: the loss falling and the test metric rising, then both flattening. A task whose "
                "loss stays high while the others fall is the one the shared layers serve least."
            )
        if projector:
            metrics_ui(run, records)
            if run["status"] not in ACTIVE:
                run_actions_ui(run)
        conflict = conflict_chart(slow)
        if conflict is not None:
            st.plotly_chart(conflict, key=f"conflict_{run_id}", width="stretch")
            norms = slow[-1].get("conflict", {}).get("norm", {}) if slow else {}
            st.caption(
                "Each task's gradient says how it wants the shared weights to move; the cosine between two "
                "of them is 1 when they want the same move and 0 when they want unrelated ones. Below 0 they "
                "conflict: a step that helps one task hurts the other, which is where sharing costs accuracy. "
                + ("Gradient sizes in the last epoch: " + ", ".join(f"{t} {n:.3g}" for t, n in norms.items()) + "."
                   if norms else "")
            )  # fmt: skip
        affinity_ui(run, slow)
        if slow and slow[-1].get("gates"):
            gates_ui(run_id, slow)
        method = run["config"].get("loss_weighting", "static")
        if slow and method != "static" and slow[0].get("loss_weights"):
            epochs = [r["epoch"] for r in slow]
            series = {t: (epochs, [r["loss_weights"].get(t) for r in slow]) for t in slow[0]["loss_weights"]}
            title = WEIGHTINGS[method].title if method in WEIGHTINGS else method
            st.plotly_chart(
                overlay(series, f"Task weights per epoch: {title}", "mean weight in the epoch"),
                key=f"weights_{run_id}",
                width="stretch",
            )
            st.caption(WEIGHTING_HINTS.get(method, WEIGHTING_HINTS["gradients"]))

    if browser_polls:
        # One fragment, rerun only when the progress line asks: the run's state changed, or new epochs are in
        # and CHART_EVERY_S has passed since the charts were drawn. A slow run's page is not drawn again for
        # nothing, and a fast one's charts take new epochs at a pace a person can follow.
        def live_view() -> None:
            if live():
                epochs_view()

        st.fragment(live_view)()
    else:
        # Two fragments: the 2-s poll of the status line redraws only it, and the epoch numbers and charts
        # take new epochs every CHART_EVERY_S while the run trains.
        st.fragment(live, run_every=every)()
        st.fragment(epochs_view, run_every=CHART_EVERY_S if started_as == "running" else None)()
