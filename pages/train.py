"""Train: pick a model and hyperparameters, queue a job, watch it live."""

import streamlit as st

from dashboard.architecture import architecture_dot
from dashboard.classroom import is_teacher, visible_runs
from dashboard.forms import apply_link_ui, estimate_ui, model_picker_ui, reset_form_ui, seed_runs, train_form_ui
from dashboard.front import class_sweep_ui
from dashboard.monitor import monitor_ui
from dashboard.state import client_address, get_runner, owner_id
from dashboard.text import md_escape
from mtl_core.analysis import run_label
from mtl_core.config import ConfigError, TrainConfig
from mtl_core.jobs.runner import QueueFull
from mtl_core.models import MODELS
from mtl_core.store.runs import StoreUnavailable

projector = is_teacher() and st.session_state.get("projector")
if not projector:  # on the projector every line of height goes to the run
    st.title("🏋️ Train")
if projector:  # the teacher's projector view: only the watched run, across the whole width
    left, right = None, st.container()
else:
    left, right = st.columns([2, 3], gap="large")

if left is not None:
    with left:
        class_sweep_ui()  # the teacher's sweep, open to the class: one click trains its next point
        apply_link_ui()  # before the model picker: a link may choose the model
        model = model_picker_ui()
        st.caption(MODELS[model].description + " Defaults are the reference recipe for this model.")
        reset_form_ui(model)
        fields = train_form_ui(model)
        estimate_ui(model)
        # Below the form, so Start stays in view on a projector. Drawn only when opened: Graphviz's layout
        # code (about 0.8 MB of script) made a first visit to Train cost the browser 0.15-0.3 s more CPU.
        picture = st.expander("🖼 What this model looks like", key="train_picture", on_change="rerun")
        if picture.open:
            with picture:
                tasks = tuple(st.session_state.get(f"f_tasks_{model}") or MODELS[model].default_tasks)
                st.graphviz_chart(architecture_dot(model, tasks), width="stretch")
        if fields is not None:
            label, n_seeds = fields.pop("label"), fields.pop("n_seeds")
            try:
                config = TrainConfig(**fields)
                configs, labels = seed_runs(config, label, n_seeds)
                # All seeds or none, in one transaction: half a group gives no mean ± std worth reading.
                run_ids = get_runner().submit_many(configs, owner_id(), labels, client=client_address())
            except ConfigError as exc:
                st.error("Cannot start this run:\n\n- " + "\n- ".join(map(md_escape, str(exc).split("; "))))
            except QueueFull as exc:
                need = f"{n_seeds} runs need {n_seeds} free job slots: " if n_seeds > 1 else ""
                st.warning(need + md_escape(exc))
            except StoreUnavailable as exc:
                st.warning(str(exc))
            else:
                st.session_state["watch_select"] = run_ids[0]  # show the new run on the right
                queued = {"id": run_ids[0], "label": labels[0], "model": model, "config": config.to_dict()}
                more = f" and {n_seeds - 1} more seeds" if n_seeds > 1 else ""
                st.toast(f"Queued {md_escape(run_label(queued))}{more}")

with right:
    if flash := st.session_state.pop("train_flash", None):  # said once, by what queued runs from the panel
        kind, words = flash
        (st.success if kind == "success" else st.warning)(words)
    runs = visible_runs()
    if not runs:
        st.info("No runs yet. Choose a model, keep the defaults or change them, and press **Start training**.")
    else:
        ids = [r["id"] for r in runs]
        by_id = {r["id"]: r for r in runs}
        if st.session_state.get("watch_select") not in ids:
            st.session_state["watch_select"] = ids[0]
        # No status in the label: it would go stale while the live panel below polls.
        chosen = st.selectbox("Watching", ids, key="watch_select", format_func=lambda i: run_label(by_id[i]))
        monitor_ui(chosen, projector=bool(projector))
