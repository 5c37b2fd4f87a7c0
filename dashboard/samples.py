"""What the MultiMNIST images look like: a grid of the first training images on Home, with their digits."""

from __future__ import annotations

import streamlit as st
from PIL import Image

from dashboard.state import get_data
from mtl_core.data import multimnist_samples
from mtl_core.tasks import label_words

SAMPLES = 12
TILE_PX = 112  # 4x the 28-pixel image: two overlapping digits need more room than one


@st.cache_resource(show_spinner=False)
def _samples() -> list[tuple[Image.Image, str]]:
    """The first training images of MultiMNIST as it is built here (from the digits "auto" holds), without
    building the whole set: a few milliseconds."""
    images, labels = multimnist_samples(get_data("auto"), SAMPLES)
    return [
        (Image.fromarray(image.numpy()).resize((TILE_PX, TILE_PX), Image.NEAREST), f"left {label_words(label)} right")
        for image, label in zip(images, labels)
    ]


def multimnist_samples_ui() -> None:
    st.subheader("MultiMNIST: two digits, two tasks that compete")
    st.markdown(
        "Each image holds one digit at the upper left and another at the lower right, overlapping "
        "(Sener & Koltun's recipe, built here from the same MNIST digits, the same for every server). "
        "Task **left** reads the first, task **right** the second. Choose the data *MultiMNIST* and a LeNet model "
        "on the Train page."
    )
    tiles = _samples()
    captions = [c for _, c in tiles]
    st.image([t for t, _ in tiles], caption=captions, width=TILE_PX, alt=[f"MultiMNIST image: {c}" for c in captions])
