"""Loss weighting and what the optimiser does to non-network parameters (small, synthetic cases)."""

import math

import pytest
import torch

from mtl_core.config import TrainConfig
from mtl_core.fastpath import FlatAdam
from mtl_core.models import build_model
from mtl_core.train import Training, make_optimizer
from mtl_core.weighting import UncertaintyWeighting


def test_uncertainty_weights_belong_to_their_task_by_name_not_by_position():
    w = UncertaintyWeighting({"even": 1.0, "mult3": 2.0})
    with torch.no_grad():
        w.log_vars["even"].fill_(1.0)
        w.log_vars["mult3"].fill_(-1.0)
    la, lb = torch.tensor(0.3), torch.tensor(0.7)
    expected = 0.5 * (1.0 * math.exp(-1.0) * 0.3 + 1.0) + 0.5 * (2.0 * math.exp(1.0) * 0.7 - 1.0)
    assert float(w({"even": la, "mult3": lb}).detach()) == pytest.approx(expected)
    assert float(w({"mult3": lb, "even": la}).detach()) == pytest.approx(expected)  # the other order: the same
    assert w.current() == pytest.approx({"even": 0.5 * math.exp(-1.0), "mult3": 0.5 * 2.0 * math.exp(1.0)})


def test_a_task_weighted_zero_gets_no_log_variance_that_could_fall_forever():
    w = UncertaintyWeighting({"even": 1.0, "mult3": 0.0})
    assert set(w.log_vars) == {"even"}
    total = w({"even": torch.tensor(0.4), "mult3": torch.tensor(5.0)})
    assert float(total.detach()) == pytest.approx(0.5 * 0.4)  # s = 0: nothing from the task weighted 0
    assert w.current()["mult3"] == 0.0


def test_weight_decay_leaves_alphas_and_learned_loss_weights_alone():
    config = TrainConfig.preset("cross_stitch", weight_decay=0.1, loss_weighting="uncertainty", path="autograd")
    model = build_model("cross_stitch", config.tasks)
    learned = list(UncertaintyWeighting({t: 1.0 for t in config.tasks}).parameters())
    opt = make_optimizer(config, model, torch.device("cpu"), learned)
    decay = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert all(decay[id(p)] == 0.0 for p in model.alpha_parameters())
    assert all(decay[id(p)] == 0.0 for p in learned)
    assert decay[id(model.w1)] == 0.1


@pytest.mark.parametrize("decoupled", [False, True])
def test_the_fast_paths_optimiser_does_not_decay_the_alphas_either(decoupled):
    flat = torch.nn.Parameter(torch.ones(6))
    flat.grad = torch.zeros(6)
    opt = FlatAdam(flat, lr=0.1, weight_decay=0.5, decoupled=decoupled, tail=2, tail_lr_mult=10.0)
    opt.update()
    assert (flat.data[:4] < 1.0).all()  # the network's weights decay
    assert (flat.data[4:] == 1.0).all()  # the alphas (the tail) do not


def test_the_recorded_training_loss_is_what_was_minimised(synthetic):
    """With learned weights starting at s = 0 the objective is about half the plain sum of the losses
    (0.5 * exp(0) * L + 0.5 * 0); the static formula would record the whole sum."""
    cfg = TrainConfig.preset("hard", epochs=1, data="synthetic", loss_weighting="uncertainty")
    (record,) = Training(cfg, synthetic).records()
    plain = sum(record["train_loss"].values())
    assert record["train_loss_total"] == pytest.approx(0.5 * plain, rel=0.05)
    static = TrainConfig.preset("hard", epochs=1, data="synthetic", path="autograd", loss_weights={"even": 2.0})
    (record,) = Training(static, synthetic).records()
    expected = 2.0 * record["train_loss"]["even"] + record["train_loss"]["mult3"]
    assert record["train_loss_total"] == pytest.approx(expected)


def test_models_take_only_the_settings_their_registry_entry_declares():
    hard = build_model("hard", ("even", "mult3"), alpha_init="convex-0.9")  # not its setting: ignored
    assert not list(hard.alpha_parameters())
    cs = build_model("cross_stitch", ("even", "mult3"), alpha_init="convex-0.9")
    first = cs.alphas()[0]
    assert first[0] == pytest.approx([0.9, 0.1]) and first[1] == pytest.approx([0.1, 0.9])


def test_the_cnn_recipe_takes_any_subset_of_its_tasks():
    assert TrainConfig.preset("cnn").loss_weights == {"value": 10.0}
    subset = TrainConfig.preset("cnn", tasks=("digit", "even"))
    assert subset.loss_weights == {} and subset.tasks == ("digit", "even")
