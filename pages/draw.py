"""Draw: a digit on the canvas (or an uploaded picture), every selected model's answer for every task."""

import streamlit as st
from streamlit_drawable_canvas import st_canvas  # only here: it needs a running Streamlit (RECIPES.md)

from dashboard.classroom import visible_runs
from dashboard.draw_ui import (
    canvas_data_url,
    default_models,
    model_file_ui,
    predictions_table_ui,
    predictions_ui,
    quick_model_ui,
    run_model,
    saliency_ui,
)
from dashboard.state import has_model, note_presence, read_if_changed, rerun_app
from dashboard.text import md_escape
from mtl_core.analysis import run_label
from mtl_core.predict import ImageInputError, prepare_drawing, read_data_url, read_image_bytes, to_display
from mtl_core.store.runs import ACTIVE

st.title("✏️ Draw a digit")
runs = [r for r in visible_runs() if has_model(r)]
from_file = model_file_ui()

if not runs and from_file is None:
    active = visible_runs(statuses=ACTIVE)
    quick_model_ui(busy=bool(active))
    if active:
        st.caption(f"{len(active)} job(s) training… this page refreshes when a model is ready.")

        @st.fragment(run_every=2.0)
        def wait_for_model() -> None:
            note_presence()
            if any(has_model(r) for r in read_if_changed("_draw_wait", visible_runs)):
                rerun_app()

        wait_for_model()
    st.stop()

by_id = {r["id"]: r for r in runs}
default = default_models(runs)
chosen = st.multiselect(
    "Models", list(by_id), default=default, key="draw_models", format_func=lambda i: run_label(by_id[i])
)
models = [run_model(by_id[i]) for i in chosen] + ([from_file] if from_file else [])

left, mid, right = st.columns([4, 1, 4], gap="medium")  # the upload's own text fits its column at 1280 px
with left:
    # Also the room the canvas's floating toolbar needs: without it the toolbar covered the model chips.
    st.markdown("**Draw here** ↓")  # short: the toolbar floats over the right half of this line
    width = st.session_state.get("stroke_width", 18)  # the slider sits under the canvas
    n = st.session_state.get("canvas_clears", 0)
    canvas_key = "canvas" if n == 0 else f"canvas_{n}"
    # The browser sends its picture as a PNG data URL; read below through read_data_url (size checked
    # before anything is decoded), never through the component's image_data, which decodes any size.
    st_canvas(
        stroke_width=width,
        stroke_color="#FFFFFF",
        background_color="#000000",
        height=280,
        width=280,
        return_image_data=True,
        key=canvas_key,
    )
    st.slider("Stroke width", 6, 40, 18, key="stroke_width")
    if st.button("🧹 Clear", key="clear_canvas"):
        st.session_state["canvas_clears"] = n + 1
        st.rerun()
    upload = st.file_uploader(
        "…or upload a picture of a digit", type=["png", "jpg", "jpeg", "bmp", "gif", "webp"], key="upload"
    )

image, source, hint = None, "canvas", ""
if upload is not None:
    try:
        image, hint = prepare_drawing(read_image_bytes(upload.getvalue()))
        source = "upload"
    except ImageInputError as exc:
        left.error(f"That file cannot be used: {md_escape(exc)}.")
elif (drawing := canvas_data_url(canvas_key)) is not None:
    try:
        image, hint = prepare_drawing(read_data_url(drawing))
    except ImageInputError as exc:
        left.error(f"That drawing cannot be used: {md_escape(exc)}.")

with mid:
    st.markdown("**Model input**")
    if image is not None:
        st.image(to_display(image), width=112, clamp=True, caption=f"28×28 from the {source}",
                 alt="The model's 28 x 28 input")  # fmt: skip
        if hint:
            st.caption(hint)
        with st.expander("How?"):
            st.caption(
                "Grey, crop to the ink, fit in 20×20, centre of mass to the centre of 28×28, "
                "normalise: the way MNIST itself was made."
            )
with right:
    if image is None and hint:
        st.info(f"✏️ {hint}")
    elif image is None:
        st.info("✏️ Draw a digit on the black square (or upload a picture) to see every task's prediction.")
    elif not models:
        st.info("Pick at least one model above.")
    else:
        st.caption(
            "Look for: do the answers agree with each other (a 7 is odd, above 4, a 7, about 7.0)? A digit "
            "drawn badly on purpose shows which task is the first to be unsure."
        )
        if len(models) > 3:  # more columns than fit: a tasks x models table reads better
            predictions_table_ui(models, image)
        else:
            for i, (col, (title, model)) in enumerate(zip(st.columns(len(models)), models)):
                with col:
                    predictions_ui(title, model, image, key=f"pred_{i}")
        saliency_ui(models, image)  # one chosen model (the first by default): one map per task
