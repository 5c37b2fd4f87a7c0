"""Canvas preprocessing (MNIST-style) and array-in, array-out prediction."""

import numpy as np
import pytest
import torch

from mtl_core.data import MEAN, STD
from mtl_core.models import build_model
from mtl_core.predict import predict, preprocess_canvas, to_display


def canvas(h=280, w=280, rgba=True, background=0):
    img = np.full((h, w, 4 if rgba else 3), background, np.uint8)
    if rgba:
        img[..., 3] = 255
    return img


def ink_of(x):
    return to_display(x).astype(float) / 255


def centre_of_mass(x):
    ink = ink_of(x)
    yy, xx = np.mgrid[0:28, 0:28]
    return (yy * ink).sum() / ink.sum(), (xx * ink).sum() / ink.sum()


def test_blank_canvas_is_none():
    assert preprocess_canvas(canvas()) is None
    assert preprocess_canvas(canvas(background=255)) is None  # white paper, no ink
    transparent = np.zeros((280, 280, 4), np.uint8)  # what the canvas gives before a stroke
    assert preprocess_canvas(transparent) is None


def test_off_centre_stroke_is_centred_and_fitted_in_20x20():
    img = canvas()
    img[10:90, 200:215, :3] = 255  # a vertical bar in the top-right corner
    x = preprocess_canvas(img)
    assert x.shape == (28, 28) and x.dtype == np.float32
    cy, cx = centre_of_mass(x)
    assert abs(cy - 13.5) <= 1 and abs(cx - 13.5) <= 1
    rows = np.nonzero(ink_of(x).max(axis=1) > 0.1)[0]
    assert 18 <= rows.max() - rows.min() + 1 <= 21  # the long side fills ~20 pixels


@pytest.mark.parametrize("width", [3, 40])
def test_thin_and_thick_strokes_keep_aspect(width):
    img = canvas()
    img[140 - width // 2 : 140 + width // 2 + 1, 40:240, :3] = 255  # horizontal bar
    ink = ink_of(preprocess_canvas(img)) > 0.1
    rows, cols = np.nonzero(ink)
    assert cols.max() - cols.min() + 1 >= 18
    assert rows.max() - rows.min() + 1 < cols.max() - cols.min() + 1


def test_dark_ink_on_white_and_transparent_rgba_are_handled():
    paper = canvas(background=255, rgba=False)
    paper[100:180, 130:150] = 0
    x = preprocess_canvas(paper)
    assert x is not None and x.max() > 2.0 and abs(x.min() - (-MEAN / STD)) < 1e-5
    layer = np.zeros((100, 100, 4), np.uint8)
    layer[20:80, 45:55] = (255, 255, 255, 255)  # white ink on a transparent layer
    assert preprocess_canvas(layer) is not None


def test_predict_any_batch_size_and_probabilities():
    torch.manual_seed(0)
    model = build_model("cnn")
    for n in (1, 3, 2500):
        out = predict(model, np.random.default_rng(n).standard_normal((n, 28, 28)).astype(np.float32))
        assert out["digit"].shape == (n, 10) and out["even"].shape == (n, 2) and out["value"].shape == (n,)
        np.testing.assert_allclose(out["digit"].sum(axis=1), 1, rtol=1e-5)
    one_logit = predict(build_model("hard"), np.zeros((28, 28), np.float32))
    assert one_logit["even"].shape == (1, 2)
    np.testing.assert_allclose(one_logit["even"].sum(), 1, rtol=1e-6)
    with pytest.raises(ValueError, match="28, 28"):
        predict(model, np.zeros((2, 32, 32), np.float32))


def test_saliency_lights_only_the_pixels_the_model_can_see():
    """A known answer: a hard-sharing MLP whose first layer reads only a 10x10 patch can owe its answers
    to those pixels alone; every task's map is 0 outside the patch and reaches 1 inside it."""
    from mtl_core.predict import saliency, saliency_overlay

    torch.manual_seed(0)
    model = build_model("hard", ("even", "mult3"))
    patch = torch.zeros(28, 28, dtype=torch.bool)
    patch[9:19, 9:19] = True
    with torch.no_grad():
        model.trunk[1].weight[:, ~patch.reshape(-1)] = 0.0
    image = np.random.default_rng(0).normal(size=(28, 28)).astype(np.float32)
    for method in ("smoothgrad", "gradient"):
        maps = saliency(model, image, method)
        assert set(maps) == {"even", "mult3"}
        for heat in maps.values():
            assert heat.shape == (28, 28) and heat.min() >= 0 and heat.max() == pytest.approx(1.0)
            assert np.all(heat[~patch.numpy()] == 0) and heat[patch.numpy()].mean() > 0.05
    overlay = saliency_overlay(image, maps["even"])
    assert overlay.shape == (224, 224, 3) and overlay.dtype == np.uint8  # 8 px a model pixel: 224 px across
    np.testing.assert_array_equal(overlay[::8, ::8], saliency_overlay(image, maps["even"], scale=1))


def _roughness(heat: np.ndarray) -> float:
    """Total variation over total mass: how speckled a map is (a smooth blob is low, salt and pepper high)."""
    return float(np.abs(np.diff(heat, axis=0)).sum() + np.abs(np.diff(heat, axis=1)).sum()) / float(heat.sum())


@pytest.mark.parametrize("name", ["hard", "cnn"])
def test_smoothgrad_is_steadier_than_one_gradient_and_the_same_every_time(name):
    from mtl_core.predict import saliency

    torch.manual_seed(1)
    model = build_model(name) if name == "cnn" else build_model(name, ("even", "mult3"))
    image = np.full((28, 28), -0.42, dtype=np.float32)
    image[5:23, 12:16] = 2.8  # a "1"
    plain, smooth = saliency(model, image, "gradient"), saliency(model, image, "smoothgrad")
    for task in model.tasks:
        assert _roughness(smooth[task]) < 0.8 * _roughness(plain[task]), task
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    again = saliency(model, image, "smoothgrad")
    assert torch.equal(torch.rand(3), expected)  # its seeded noise leaves the process's random stream alone
    for task in model.tasks:
        np.testing.assert_array_equal(again[task], smooth[task])  # one drawing, one map
    with pytest.raises(ValueError, match="smoothgrad, gradient"):
        saliency(model, image, "lime")


def test_saliency_covers_every_task_of_the_cnn():
    from mtl_core.predict import saliency

    model = build_model("cnn")
    maps = saliency(model, np.zeros((28, 28), dtype=np.float32) + 0.3)
    assert set(maps) == {"digit", "even", "gt4", "value"}
    assert all(m.shape == (28, 28) and 0 <= m.min() and m.max() <= 1 for m in maps.values())
