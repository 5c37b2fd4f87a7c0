"""Live view of one run: status, progress with ETA, Stop, curves; redrawn by a polling fragment."""

from __future__ import annotations

import streamlit as st

from dashboard.charts import overlay, training_curves
from dashboard.state import get_runner, get_store, has_model, owner_id
from mtl_core.analysis import data_source, run_label
from mtl_core.runs import ACTIVE

POLL_S = 1.0


def _eta(records: list[dict], total: int) -> str:
    if not records:
        return "first epoch running…"
    per = sum(r["seconds"] for r in records) / len(records)
    left = per * (total - len(records))
    return f"~{left:.0f} s left ({per:.1f} s per epoch)"


def status_ui(run: dict, records: list[dict]) -> None:
    total = run["config"]["epochs"]
    status = run["status"]
    if status == "queued":
        ahead = [r for r in get_store().list_runs(statuses=("queued", "running")) if r["created"] < run["created"]]
        st.info(f"Queued: {len(ahead)} job(s) ahead of this one on the server.")
    elif status == "running":
        st.progress(len(records) / total, text=f"Epoch {len(records)} of {total} · {_eta(records, total)}")
    elif status == "finished":
        st.success(f"Finished {total} epochs in {run['train_seconds']:.1f} s; best epoch {run['best_epoch']}.")
    elif status == "cancelled":
        st.warning(f"Stopped: {run['reason']}. The best weights so far are kept.")
    else:  # failed or diverged
        st.error(f"{status.capitalize()}: {run['reason']}")


def metrics_ui(run: dict, records: list[dict]) -> None:
    """The latest epoch's numbers, three to a row so long task lists still fit."""
    if not records:
        return
    last = records[-1]
    items = [("Parameters", f"{run['params']:,}" if run["params"] else "-")]
    if last["avg_acc"] is not None:
        items.append(("Average acc", f"{last['avg_acc']:.2%}"))
    for task, m in last["metrics"].items():
        items.append((task, f"{m['acc']:.2%}" if "acc" in m else f"MAE {m['mae_digits']:.2f}"))
    for start in range(0, len(items), 3):
        for col, (label, value) in zip(st.columns(3), items[start : start + 3]):
            col.metric(label, value)


def run_actions_ui(run: dict) -> None:
    """For a run that is over: download its model, or delete it (only its owner can)."""
    c1, c2, _ = st.columns([2, 2, 3])
    if has_model(run):
        with open(run["weights_path"], "rb") as f:
            c1.download_button(
                "⬇ Model (.safetensors)",
                f.read(),
                f"{run['model']}-{run['id']}.safetensors",
                "application/octet-stream",
                key=f"dl_model_{run['id']}",
            )
    if run["owner"] == owner_id():
        with c2.popover("🗑 Delete run"):
            st.caption("Deletes its curves and its model file for good.")
            if st.button("Delete", type="primary", key=f"delete_{run['id']}"):
                get_store().delete_run(run["id"])
                st.rerun(scope="app")


def monitor_ui(run_id: str) -> None:
    store = get_store()
    run = store.get_run(run_id)
    if run is None:
        st.info("That run no longer exists.")
        return
    active_key = f"_was_active_{run_id}"
    st.session_state[active_key] = run["status"] in ACTIVE

    @st.fragment(run_every=POLL_S if run["status"] in ACTIVE else None)
    def live() -> None:
        run = store.get_run(run_id)
        records = store.epochs(run_id)
        head, stop = st.columns([5, 1])
        head.markdown(f"**{run_label(run)}** · {data_source(run)} · {run['device'] or 'waiting for a worker'}")
        if (
            run["status"] in ACTIVE
            and run["owner"] == owner_id()
            and stop.button("⏹ Stop", key="stop_run", width="stretch")
        ):
            get_runner().stop(run_id)
            st.toast("Stopping…")
        status_ui(run, records)
        if run["status"] not in ACTIVE:
            run_actions_ui(run)
        metrics_ui(run, records)
        if records:
            st.plotly_chart(training_curves(records, run["config"]["epochs"]), key=f"curves_{run_id}", width="stretch")
        if records and run["config"].get("loss_weighting") == "uncertainty":
            epochs = [r["epoch"] for r in records]
            series = {t: (epochs, [r["loss_weights"][t] for r in records]) for t in records[0]["loss_weights"]}
            st.plotly_chart(
                overlay(series, "Learned loss weights (uncertainty weighting)", "weight"),
                key=f"weights_{run_id}",
                width="stretch",
            )
        if st.session_state.get(active_key) and run["status"] not in ACTIVE:
            st.session_state[active_key] = False
            st.rerun(scope="app")  # stop polling: the run is over

    live()
