"""Pieces of the Draw page: the uploaded-image check, the quick model, and one model's predictions."""

from __future__ import annotations

import numpy as np
import streamlit as st

from dashboard.charts import class_probabilities
from dashboard.state import client_address, get_runner, model_of, owner_id
from dashboard.text import md_escape
from mtl_core.analysis import run_label
from mtl_core.checkpoint import ModelFileError, load_model_bytes
from mtl_core.config import TrainConfig
from mtl_core.predict import predict
from mtl_core.tasks import VALUE_SCALE, get_task

# The quick model: the 4-task CNN (it answers every task) on 8,000 digits for 3 epochs.
QUICK_MODEL = dict(model="cnn", epochs=3, train_limit=8000)


def quick_model_ui(busy: bool) -> None:
    """Offer the quick model; `busy` (a job of yours is already training) greys the button out."""
    st.info(
        "No trained model yet. Train a quick one (the 4-task CNN on 8,000 digits, 3 epochs, "
        "well under a minute on a CPU), or train your own on the **Train** page."
    )
    if st.button("⚡ Train a quick model", type="primary", key="quick_model", disabled=busy):
        try:
            get_runner().submit(
                TrainConfig.preset(**QUICK_MODEL), owner=owner_id(), label="quick model", client=client_address()
            )
        except Exception as exc:  # noqa: BLE001 - QueueFull or ConfigError, shown as a message
            st.warning(str(exc))
        else:
            st.rerun()  # show it training and start waiting for the model


def model_file_ui():
    """An uploaded .safetensors model (e.g. from `python -m mtl_core train --save`): (title, model) or None.

    The file is untrusted: safetensors holds no code, and load_model_bytes checks every key and shape."""
    with st.expander("Use a model file (.safetensors)"):
        upload = st.file_uploader("Model saved by this playground", type=["safetensors"], key="model_file")
    if upload is None:
        return None
    try:
        model, config, _ = load_model_bytes(upload.getvalue())
    except ModelFileError as exc:
        st.error(f"That model file cannot be used: {exc}")
        return None
    return f"{upload.name} ({config.model})", model  # shown through md_escape: a file name is plain text


def run_model(run: dict):
    """(title, model) of a stored run."""
    return run_label(run), model_of(run)[0]


def predictions_ui(title: str, model, image: np.ndarray, key: str) -> None:
    """Every task's answer from one model for one preprocessed 28x28 image."""
    out = predict(model, image[None])
    st.markdown(f"**{md_escape(title)}**")
    for task, probs in out.items():
        t = get_task(task)
        if t.kind == "regression":
            v = float(probs[0])
            st.metric(f"{task}: digit value", f"{v * VALUE_SCALE:.2f}", help=f"raw output d/9 = {v:.3f}")
        elif t.kind == "multiclass":
            p = probs[0]
            st.plotly_chart(
                class_probabilities(p, t.classes, f"{task}: {t.classes[int(p.argmax())]} ({p.max():.0%})"),
                key=f"{key}_{task}",
                width="stretch",
            )
        else:
            p_yes = float(probs[0][1])
            answer = t.classes[1] if p_yes >= 0.5 else t.classes[0]
            st.progress(p_yes, text=f"{t.title} → **{answer}** (P({t.classes[1]}) = {p_yes:.0%})")
