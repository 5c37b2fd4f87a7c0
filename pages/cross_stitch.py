"""Cross-stitch: the learned alpha matrices per unit and epoch, live while the run trains."""

import streamlit as st

from dashboard.alphas import alpha_reading, colour_limit, initial_alphas
from dashboard.charts import alpha_animation, alpha_heatmaps, alpha_lines
from dashboard.classroom import visible_runs
from dashboard.state import get_store, read_if_changed, rerun_app
from mtl_core.analysis import run_label
from mtl_core.models import MODELS
from mtl_core.store.runs import ACTIVE

CROSS_STITCH_MODELS = [name for name, spec in MODELS.items() if "alpha_init" in spec.settings]

st.title("🧵 Cross-stitch units")
st.markdown(
    "Each cross-stitch unit mixes the task columns: task *i*'s next layer reads "
    "**Σⱼ α[i, j] · hⱼ**. The diagonal α[i, i] is the **same-task** weight (how much a column keeps its own "
    "features); the off-diagonal α[i, j] are **other-task** weights (how much it takes in from task *j*). "
    "The alphas are free weights, not shares of 100 %: identity means no sharing at all, and what counts is "
    "the size of the other-task weights against the same-task one. Above 1 a column amplifies what it reads; "
    "a negative α subtracts the other task's features."
)

# Every cross-stitch kind (the MLP, or the CNN with units after each conv block and the FC layer).
runs = [r for r in visible_runs() if r["model"] in CROSS_STITCH_MODELS and r["status"] != "queued"]
if not runs:
    st.info(
        "No cross-stitch run yet. Train one on the **Train** page (model: Cross-stitch); "
        "its alphas appear here while it trains."
    )
    st.stop()

by_id = {r["id"]: r for r in runs}
# Open on the newest run with something to show (a run cancelled while queued has no alphas).
with_epochs = [r["id"] for r in runs if r["best_epoch"] or r["status"] == "running"]
if st.session_state.get("cs_run") not in by_id:
    st.session_state["cs_run"] = with_epochs[0] if with_epochs else runs[0]["id"]
run_id = st.selectbox("Run", list(by_id), key="cs_run", format_func=lambda i: run_label(by_id[i]))
cfg = by_id[run_id]["config"]
st.caption(f"alpha initialisation: {cfg['alpha_init']} · alpha learning-rate multiplier: {cfg['alpha_lr_mult']:g}")


started_as = by_id[run_id]["status"]


@st.fragment(run_every=2.0 if started_as in ACTIVE else None)
def alphas_view() -> None:
    store = get_store()
    run, records = read_if_changed(f"_cs_{run_id}", lambda: (store.get_run(run_id), store.epochs(run_id)))
    if run is None:
        st.info("That run no longer exists.")
        return
    if started_as in ACTIVE and run["status"] != started_as:
        rerun_app()  # the run ended: stop polling
    history = [r["alphas"] for r in records if r.get("alphas")]
    tasks = run["config"]["tasks"]
    if not history:
        if run["status"] in ACTIVE:
            st.info("Waiting for the first epoch…")
        else:
            st.info(f"This run ended ({run['status']}) before its first epoch, so it has no alphas to show.")
        return
    if run["status"] in ACTIVE:
        st.caption(f"Training: epoch {len(history)} of {run['config']['epochs']} (updates every 2 s)")
    else:
        st.caption(f"Run {run['status']} after {len(history)} epoch{'' if len(history) == 1 else 's'}.")
    # Epoch 0 is the initialisation (known from the config), so the first frame shows where they began.
    history = [initial_alphas(run["config"]["alpha_init"], len(tasks), len(history[0])), *history]
    n = len(history) - 1
    epoch = st.slider("Epoch (0: as initialised)", 0, n, n, key="cs_epoch")
    title = f"Alphas after epoch {epoch}" if epoch else "Alphas as initialised"
    own_scale = st.toggle(
        "Rescale the colours to this epoch",
        key="cs_rescale",
        help="Off: one colour scale for every epoch of the run, so growth shows as colour. On: this epoch's own range.",
    )
    limit = None if own_scale else colour_limit(history)
    st.plotly_chart(alpha_heatmaps(history[epoch], tasks, title, limit=limit), key="cs_heat", width="stretch")
    reading = alpha_reading(history[: epoch + 1], run["config"]["alpha_lr_mult"], tasks)
    st.markdown(f"**What they say** (epoch {epoch}):\n\n" + "\n".join(f"- {line}" for line in reading))
    st.plotly_chart(alpha_lines(history, tasks, first_epoch=0), key="cs_lines", width="stretch")
    with st.expander("Play the alphas epoch by epoch"):
        st.plotly_chart(
            alpha_animation(history, tasks, first_epoch=0, limit=colour_limit(history)), key="cs_anim", width="stretch"
        )


alphas_view()
