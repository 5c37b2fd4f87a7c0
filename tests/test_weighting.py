"""Loss weighting (mtl_core/weighting/__init__.py): every method in the registry through the one seam, each
paper's checkable behaviour on a small case, and what the optimiser does to non-network parameters."""

import math

import pytest
import torch

from mtl_core.config import ConfigError, TrainConfig, weightings_for
from mtl_core.models import build_model, shares_parameters
from mtl_core.training.fastpath import FlatAdam
from mtl_core.training.loop import Training
from mtl_core.training.steps import make_optimizer
from mtl_core.weighting import DWA, FAMO, WEIGHTINGS, GradNorm, UncertaintyWeighting, task_gradient_rows


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


# --- the registry: every method through the same seam --------------------------------------------


@pytest.mark.parametrize("method", list(WEIGHTINGS))
@pytest.mark.parametrize("model", ["hard", "cross_stitch"])
def test_every_method_trains_through_the_seam_and_records_its_weights(method, model, synthetic):
    if method not in weightings_for(model):
        pytest.skip(f"{method} does not fit {model} (weightings_for)")
    cfg = TrainConfig.preset(model, epochs=2, data="synthetic", loss_weighting=method)
    training = Training(cfg, synthetic)
    records = list(training.records())
    assert training.status == "finished" and training.path == ("fast" if method == "static" else "autograd")
    for r in records:
        assert set(r["loss_weights"]) == set(cfg.tasks) and all(math.isfinite(w) for w in r["loss_weights"].values())
        assert math.isfinite(r["train_loss_total"])
    assert records[-1]["metrics"]["even"]["acc"] > 0.4  # it trained at all (synthetic labels are half and half)


@pytest.mark.parametrize("method", [m for m, cls in WEIGHTINGS.items() if cls.needs_shared])
def test_gradient_methods_refuse_a_model_that_shares_nothing(method, synthetic):
    with pytest.raises(ConfigError, match="stl (shares|has) none"):
        Training(TrainConfig.preset("stl", epochs=1, data="synthetic", loss_weighting=method), synthetic)


def test_the_form_offers_only_the_methods_a_model_can_use():
    assert not shares_parameters("stl") and shares_parameters("hard") and shares_parameters("cross_stitch")
    assert shares_parameters("cnn")


def _two_task_toy():
    """A shared 3-vector and two task losses whose gradients on it point apart (cosine < 0) and differ
    in size about tenfold: at 0 they are -2a and 20b, with a.b > 0."""
    shared = torch.nn.Parameter(torch.zeros(3))
    a, b = torch.tensor([1.0, 0.2, 0.0]), torch.tensor([1.0, -0.5, 0.3])
    return shared, lambda: {"even": (shared @ a - 1.0) ** 2, "mult3": 10.0 * (shared @ b + 1.0) ** 2}


def test_uncertainty_learns_the_log_of_each_tasks_loss():
    """Kendall et al.: with the loss held fixed, d/ds of 0.5 (exp(-s) L + s) is 0 at s = log L."""
    w = UncertaintyWeighting({"even": 1.0, "mult3": 1.0})
    opt = torch.optim.Adam(w.parameters(), lr=0.05)
    fixed = {"even": torch.tensor(0.3), "mult3": torch.tensor(4.0)}
    for _ in range(1500):
        opt.zero_grad()
        w.backward(fixed, [], [])
        opt.step()
    for t, loss in fixed.items():
        assert float(w.log_vars[t].detach()) == pytest.approx(math.log(float(loss)), abs=0.02)


def test_gradnorm_moves_the_weighted_gradient_norms_toward_balance():
    shared, losses = _two_task_toy()
    g = GradNorm({"even": 1.0, "mult3": 1.0})
    opt = torch.optim.SGD(list(g.parameters()), lr=0.01)  # the weights only: the shared vector stays put

    def imbalance() -> float:
        rows = task_gradient_rows(list(losses().values()), [shared])
        norms = [float(g.w[t].detach()) * float(r.norm()) for t, r in zip(("even", "mult3"), rows)]
        return max(norms) / min(norms)

    before = imbalance()
    for _ in range(300):
        opt.zero_grad()
        shared.grad = None
        g.backward(losses(), [shared], [])
        opt.step()
        g.after_step()
    assert before > 5 and imbalance() < 1.5, (before, imbalance())
    assert sum(float(p.detach()) for p in g.w.values()) == pytest.approx(2.0)  # renormalised to the number of tasks


def test_pcgrad_leaves_no_task_with_a_conflicting_update():
    """Yu et al.: after projection no task's gradient has a negative inner product with the update,
    where the plain sum of the gradients conflicts with one of them."""
    shared, losses = _two_task_toy()
    rows = task_gradient_rows(list(losses().values()), [shared])
    assert float(rows[0] @ rows[1]) < 0 and min(float(r @ sum(rows)) for r in rows) < 0
    WEIGHTINGS["pcgrad"]({"even": 1.0, "mult3": 1.0}).backward(losses(), [shared], [])
    assert min(float(r @ shared.grad) for r in rows) >= -1e-6


def test_dwa_weighs_more_the_task_whose_loss_fell_slower():
    dwa = DWA({"even": 1.0, "mult3": 1.0})
    assert dwa.current() == {"even": 1.0, "mult3": 1.0}
    dwa.end_epoch({"even": 1.0, "mult3": 1.0})
    dwa.end_epoch({"even": 0.5, "mult3": 0.9})  # even halved, mult3 barely moved
    w = dwa.current()
    assert w["mult3"] > 1.0 > w["even"] and sum(w.values()) == pytest.approx(2.0)
    expected = 2 * math.exp(0.9 / 2) / (math.exp(0.5 / 2) + math.exp(0.9 / 2))
    assert w["mult3"] == pytest.approx(expected)


def test_famo_shifts_weight_toward_the_task_whose_loss_falls_slower():
    famo = FAMO({"even": 1.0, "mult3": 1.0})
    shared = torch.nn.Parameter(torch.zeros(()))
    for _ in range(50):
        famo.backward({"even": shared + 1.0, "mult3": shared + 1.0}, [], [shared])
        # After the step, even's loss fell by half and mult3's did not move.
        famo.after_step({"even": torch.tensor(0.5), "mult3": torch.tensor(1.0)})
    z = famo.current()
    assert z["mult3"] > 0.6 > z["even"]


# --- the gradient-conflict probe (Training's record "conflict") -----------------------------------


@pytest.mark.parametrize("model", ["hard", "cross_stitch", "cnn"])
def test_the_conflict_probe_watches_without_changing_the_training(model, synthetic):
    cfg = TrainConfig.preset(model, epochs=2, data="synthetic", max_batches=8, precision="fp32")
    watched = list(Training(cfg, synthetic, conflict_probes=4).records())
    plain = list(Training(cfg, synthetic, conflict_probes=0).records())
    for a, b in zip(watched, plain):
        assert a["train_loss"] == b["train_loss"] and a["metrics"] == b["metrics"]
        assert b["conflict"] is None and a["conflict"]["probes"] >= 1
        assert all(-1.0 <= c <= 1.0 for c in a["conflict"]["cos"].values())
        assert set(a["conflict"]["norm"]) == set(cfg.tasks)
        pairs = len(cfg.tasks) * (len(cfg.tasks) - 1) // 2
        assert len(a["conflict"]["cos"]) == pairs


def test_two_tasks_asking_the_same_of_the_shared_layers_have_cosine_one(synthetic):
    """A known answer: mult3 given even's labels and even's head pulls the trunk exactly as even does."""
    training = Training(TrainConfig.preset("hard", epochs=1, data="synthetic", path="autograd"), synthetic)
    heads = training.model.heads
    with torch.no_grad():
        heads["mult3"].weight.copy_(heads["even"].weight)
        heads["mult3"].bias.copy_(heads["even"].bias)
    training._train_t["mult3"] = training._train_t["even"]
    training._probe_conflict(torch.arange(64))
    ((cos, norms, _),) = training._conflict
    assert cos["even|mult3"] == pytest.approx(1.0, abs=1e-5)
    assert norms["even"] == pytest.approx(norms["mult3"], rel=1e-5) and norms["even"] > 0


def test_a_model_that_shares_nothing_records_no_conflict(synthetic):
    (record,) = Training(TrainConfig.preset("stl", epochs=1, data="synthetic"), synthetic).records()
    assert record["conflict"] is None


def test_famos_second_look_at_the_batch_leaves_batchnorm_statistics_alone(synthetic):
    """FAMO measures each loss again after the step; that forward must not count as a training step
    for BatchNorm (its running statistics and batch count move once a step, as without FAMO)."""
    from mtl_core.config import TrainConfig
    from mtl_core.training.loop import Training

    cfg = TrainConfig.preset("cnn", epochs=1, batch_size=32, max_batches=5, data="synthetic", precision="fp32")
    famo = Training(cfg.replace(loss_weighting="famo"), synthetic, conflict_probes=0)
    list(famo.records())
    static = Training(cfg, synthetic, conflict_probes=0)
    list(static.records())
    assert int(famo.model.trunk[5].num_batches_tracked) == int(static.model.trunk[5].num_batches_tracked) == 5
