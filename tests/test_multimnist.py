"""MultiMNIST (mtl_core/multimnist.py), the LeNet recipe, and MGDA-UB: known answers on small cases."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from mtl_core import multimnist
from mtl_core.config import ConfigError, TrainConfig, weightings_for
from mtl_core.data import load_subset, make_multimnist, make_synthetic, multimnist_samples, pixels
from mtl_core.tasks import label_words, make_targets
from mtl_core.training.loop import Training
from mtl_core.weighting import MGDAUB
from mtl_core.weighting.gradient import min_norm_weights


def _by_hand(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """The recipe written out pixel by pixel: a 36x36 zero canvas, the left digit at rows/columns 0-27, the
    right one at 6-33, the brighter pixel where they overlap; each output pixel takes the canvas pixel
    under its centre."""
    canvas = np.zeros((36, 36), dtype=np.uint8)
    canvas[0:28, 0:28] = left
    for i in range(28):
        for j in range(28):
            canvas[6 + i, 6 + j] = max(canvas[6 + i, 6 + j], right[i, j])
    out = np.zeros((28, 28), dtype=np.uint8)
    for i in range(28):
        for j in range(28):
            out[i, j] = canvas[int((i + 0.5) * 36 / 28), int((j + 0.5) * 36 / 28)]
    return out, canvas


def test_the_builder_matches_a_hand_built_36x36_case():
    g = torch.Generator().manual_seed(3)
    left = torch.randint(0, 256, (2, 28, 28), generator=g, dtype=torch.uint8)
    right = torch.randint(0, 256, (2, 28, 28), generator=g, dtype=torch.uint8)
    left[0], right[0] = 0, 0
    left[0, 27, 27], right[0, 21, 21] = 90, 200  # the same canvas pixel (27, 27): the brighter one wins
    left[0, 0, 0], right[0, 27, 27] = 50, 70  # canvas (0, 0) and (33, 33): each digit's own corner
    built = multimnist.overlay(left, right)
    for k in range(2):
        expected, canvas = _by_hand(left[k].numpy(), right[k].numpy())
        assert np.array_equal(built[k].numpy(), expected), k
        # The shrinking is PIL's NEAREST, which the paper's scipy.misc.imresize called.
        assert np.array_equal(np.asarray(Image.fromarray(canvas).resize((28, 28), Image.NEAREST)), expected)
    _, canvas0 = _by_hand(left[0].numpy(), right[0].numpy())
    assert (canvas0[27, 27], canvas0[0, 0], canvas0[33, 33]) == (200, 50, 70)


def test_every_image_gets_a_seeded_partner_from_its_own_split_and_both_labels():
    base = make_synthetic(300, 100, seed=4)
    a, b = make_multimnist(base), make_multimnist(base)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)  # every server: the same set
    assert a.pairs and a.train_y.shape == (300, 2) and a.test_y.shape == (100, 2) and a.source == "multimnist"
    partner = multimnist.partners(300, "train")
    assert torch.equal(a.train_y[:, 0], base.train_y) and torch.equal(a.train_y[:, 1], base.train_y[partner])
    test_partner = multimnist.partners(100, "test")
    assert int(test_partner.max()) < 100  # drawn from the test split, never from training
    raw = pixels(base.train_x)
    assert torch.equal(pixels(a.train_x[:5]), multimnist.overlay(raw[:5], raw[partner[:5]]))
    assert torch.equal(pixels(base.train_x), raw) and raw.dtype == torch.uint8  # normalising undoes exactly


def test_the_sample_grid_shows_the_first_images_of_the_set_itself():
    base = make_synthetic(200, 50, seed=5)
    images, labels = multimnist_samples(base, 6)
    full = make_multimnist(base)
    assert torch.equal(images, pixels(full.train_x[:6])) and torch.equal(labels, full.train_y[:6])


def test_left_and_right_read_their_column_and_the_digit_tasks_read_the_left_one():
    labels = torch.tensor([[3, 8], [6, 1]])
    t = make_targets(labels, ("left", "right", "even", "mult3"))
    assert t["left"].tolist() == [3, 6] and t["right"].tolist() == [8, 1]
    assert t["even"].tolist() == [0, 1] and t["mult3"].tolist() == [1, 1]
    with pytest.raises(ValueError, match="two digits per image"):
        make_targets(torch.tensor([3, 6]), ("right",))
    assert label_words(labels[0]) == "3 | 8" and label_words(torch.tensor(7)) == "7"


def test_left_and_right_need_the_multimnist_data():
    with pytest.raises(ConfigError, match="choose the MultiMNIST data"):
        TrainConfig(model="lenet", data="mnist")
    config = TrainConfig.preset("lenet")
    assert (config.data, config.tasks, config.optimizer, config.batch_size, config.epochs) == (
        "multimnist",
        ("left", "right"),
        "sgd",
        256,
        100,
    )
    assert (config.scheduler, config.step_size, config.gamma) == ("step", 10, 0.85)


# --- MGDA-UB ---------------------------------------------------------------------------------------


def test_min_norm_weights_on_identical_tasks_are_even():
    g = torch.tensor([[1.0, 2.0, -3.0], [1.0, 2.0, -3.0]])
    assert min_norm_weights(g).tolist() == pytest.approx([0.5, 0.5])


@pytest.mark.parametrize(("a", "b"), [(1.0, 1.0), (1.0, 3.0), (5.0, 0.5)])
def test_min_norm_weights_on_orthogonal_gradients(a, b):
    g = torch.tensor([[a, 0.0, 0.0], [0.0, b, 0.0]])
    expected = [b * b / (a * a + b * b), a * a / (a * a + b * b)]
    assert min_norm_weights(g).tolist() == pytest.approx(expected)


def test_min_norm_weights_pick_the_shorter_gradient_when_it_lies_inside():
    # g2 = 0.5 g1: the shortest convex combination is g2 alone.
    g = torch.tensor([[2.0, 2.0], [1.0, 1.0]])
    assert min_norm_weights(g).tolist() == pytest.approx([0.0, 1.0])


def test_min_norm_weights_for_three_tasks_reach_the_min_norm_point():
    g = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])
    w = min_norm_weights(g)
    assert float(w.sum()) == pytest.approx(1.0) and (w >= 0).all()
    assert float((w @ g.double()).norm()) < 1e-2  # the origin is in their hull


def test_mgda_ub_weights_the_tasks_by_their_gradients_on_the_shared_representation():
    """Two heads on a 2-d representation z: task losses whose gradients on z are orthogonal with norms 1 and
    3 get weights 0.9 and 0.1 (b^2 and a^2 over a^2 + b^2), and the step is the weighted sum's gradient."""
    z = torch.tensor([[0.0, 0.0]], requires_grad=True)
    shared = torch.nn.Parameter(torch.zeros(1))
    rep = z + shared
    losses = {"left": rep[0, 0] * 1.0, "right": rep[0, 1] * 3.0}
    method = MGDAUB({"left": 1.0, "right": 1.0})
    method.backward(losses, [shared], [], representation=rep)
    assert method.epoch_weights() == pytest.approx({"left": 0.9, "right": 0.1})
    assert float(shared.grad) == pytest.approx(0.9 * 1.0 + 0.1 * 3.0)


def test_mgda_ub_needs_one_shared_trunk(synthetic):
    assert "mgda_ub" in weightings_for("lenet") and "mgda_ub" in weightings_for("hard")
    assert "mgda_ub" not in weightings_for("cross_stitch") and "mgda_ub" not in weightings_for("stl_lenet")
    with pytest.raises(ConfigError, match="one shared trunk"):
        Training(TrainConfig.preset("cross_stitch", epochs=1, data="synthetic", loss_weighting="mgda_ub"), synthetic)


@pytest.fixture(scope="module")
def real_pairs():
    """MultiMNIST from the embedded subset's real digits (offline), cut to 2,000 train / 500 test images."""
    return make_multimnist(load_subset()).limited(2000, 500)


@pytest.mark.parametrize("model", ["lenet", "stl_lenet"])
def test_the_lenets_train_on_multimnist_pairs(model, real_pairs):
    data = real_pairs
    weighting = "mgda_ub" if model == "lenet" else "static"
    config = TrainConfig.preset(model, epochs=2, loss_weighting=weighting, batch_size=32)
    training = Training(config, data)
    records = list(training.records())
    assert training.status == "finished"
    last = records[-1]
    assert set(last["metrics"]) == {"left", "right"}
    assert last["metrics"]["left"]["acc"] > 0.6 and last["metrics"]["right"]["acc"] > 0.5  # chance is 0.1
    if model == "lenet":
        assert math.isclose(sum(last["loss_weights"].values()), 1.0, rel_tol=1e-6)
