"""The hand-written hard-sharing step against autograd: gradients, a run of hundreds of steps, and
which runs take it."""

from __future__ import annotations

import copy

import pytest
import torch
from native_kernel import kernel_device, use_kernel  # tests/native_kernel.py

from mtl_core.config import TrainConfig
from mtl_core.metrics import task_loss
from mtl_core.models import build_model
from mtl_core.tasks import make_targets
from mtl_core.training.fastpath import make_step
from mtl_core.training.loop import Training

TASK_SETS = {
    "the study's two binary tasks": (("even", "mult3"), {"mult3": 2.5}),
    "every kind of head": (("even", "digit", "value"), {"value": 10.0, "digit": 0.5}),
}


@pytest.mark.parametrize("model_name", ["hard", "stl", "cross_stitch", "mmoe"])
@pytest.mark.parametrize("case", list(TASK_SETS))
def test_gradients_equal_autograd(case, model_name, synthetic):
    tasks, weights = TASK_SETS[case]
    torch.manual_seed(0)
    model = build_model(model_name, tasks).double()
    for a in model.alpha_parameters():  # lopsided alphas: a transposed mixing gradient shows
        a.data = torch.eye(len(tasks), dtype=torch.float64) + 0.3 * torch.rand(len(tasks), len(tasks)).double()
    twin = copy.deepcopy(model)
    x = synthetic.train_x[:64].double()
    y = make_targets(synthetic.train_y[:64], tasks)
    y = {t: (v.double() if v.is_floating_point() else v) for t, v in y.items()}

    out = model(x)
    total = sum(weights.get(t, 1.0) * task_loss(t, out[t], y[t]) for t in tasks)
    total.backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters()}

    step = make_step(twin, weights)
    losses = step(x, y)
    for i, t in enumerate(tasks):
        assert losses[i].item() == pytest.approx(task_loss(t, out[t], y[t]).item(), rel=1e-12)
    for name, p in twin.named_parameters():
        got = step.params.grad_of(p)
        torch.testing.assert_close(got, expected[name], rtol=1e-6, atol=1e-9, msg=f"gradient of {name}")
        # The model's parameters are views of the flat buffer: the optimiser's updates reach them.
        assert p.data.untyped_storage().data_ptr() == step.params.flat.data.untyped_storage().data_ptr()


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_flat_adam_takes_exactly_torchs_fused_steps(optimizer):
    from mtl_core.training.fastpath import FlatAdam

    torch.manual_seed(0)
    ours = torch.nn.Parameter(torch.randn(1000))
    theirs = torch.nn.Parameter(ours.detach().clone())
    cls = torch.optim.AdamW if optimizer == "adamw" else torch.optim.Adam
    reference = cls([theirs], lr=3e-3, weight_decay=0.01, fused=True)
    flat = FlatAdam(ours, lr=3e-3, weight_decay=0.01, decoupled=optimizer == "adamw")
    scheduler = torch.optim.lr_scheduler.StepLR(flat, step_size=5, gamma=0.5)
    reference_scheduler = torch.optim.lr_scheduler.StepLR(reference, step_size=5, gamma=0.5)
    for _ in range(12):
        g = torch.randn(1000)
        ours.grad, theirs.grad = g.clone(), g.clone()
        flat.step(), reference.step()
        scheduler.step(), reference_scheduler.step()
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("kernel", ["C++", "Python"])
@pytest.mark.parametrize("model_name", ["hard", "stl", "cross_stitch", "mmoe"])
def test_hundreds_of_steps_match_the_autograd_path(synthetic, model_name, kernel, monkeypatch):
    use_kernel(kernel, monkeypatch)
    cfg = TrainConfig.preset(
        model_name,
        epochs=4,
        batch_size=8,
        data="synthetic",
        loss_weights={"even": 2.0},
        precision="fp32",
        device=kernel_device(kernel),
    )
    if model_name == "cross_stitch":  # the alphas' own learning rate, as the paper sets it
        cfg = cfg.replace(alpha_init="convex-0.9", alpha_lr_mult=100.0)
    assert synthetic.n_train // 8 * cfg.epochs == 256  # optimiser steps compared
    fast = Training(cfg, synthetic)
    slow = Training(cfg.replace(path="autograd"), synthetic)
    assert (fast.path, slow.path) == ("fast", "autograd")
    assert fast.kernel == kernel
    for a, b in zip(fast.records(), slow.records(), strict=True):
        for t in cfg.tasks:
            assert a["train_loss"][t] == pytest.approx(b["train_loss"][t], rel=1e-4, abs=1e-6)
            assert a["metrics"][t]["acc"] == pytest.approx(b["metrics"][t]["acc"], abs=1e-9)
    for (name, p), q in zip(fast.model.named_parameters(), slow.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_long_run_on_real_digits_matches_too(real_data, precision):
    """Several hundred steps (batch 128 over 4,000+ digits, 2 epochs) on real MNIST digits, against the
    fp32 autograd path. The bf16 first layer rounds differently at every step, so its path drifts
    apart: it must land as close in accuracy, with the loss within what another seed gives."""
    data = real_data.limited(n_train=20_000, n_test=2_000)
    cfg = TrainConfig.preset("hard", epochs=2, precision="fp32")
    fast, slow = Training(cfg.replace(precision=precision), data), Training(cfg.replace(path="autograd"), data)
    assert (fast.path, fast.precision) == ("fast", precision)
    a, b = list(fast.records())[-1], list(slow.records())[-1]
    assert data.n_train // 128 * 2 >= 60
    assert a["avg_acc"] == pytest.approx(b["avg_acc"], abs=0.003)
    for t in cfg.tasks:
        assert a["train_loss"][t] == pytest.approx(b["train_loss"][t], rel=0.02 if precision == "fp32" else 0.06)


@pytest.mark.parametrize("model_name", ["hard", "stl", "cross_stitch", "mmoe"])
@pytest.mark.parametrize("case", list(TASK_SETS))
def test_the_bf16_first_layer_gives_autograds_gradients_to_bf16_precision(case, model_name, synthetic):
    tasks, weights = TASK_SETS[case]
    torch.manual_seed(0)
    model = build_model(model_name, tasks)
    twin = copy.deepcopy(model)
    x, y = synthetic.train_x[:128], make_targets(synthetic.train_y[:128], tasks)
    out = model(x)
    sum(weights.get(t, 1.0) * task_loss(t, out[t], y[t]) for t in tasks).backward()
    step = make_step(twin, weights, bf16=True)
    assert step.prepare_inputs(synthetic.train_x).dtype == torch.bfloat16
    losses = step(step.prepare_inputs(x), y)
    for i, t in enumerate(tasks):  # the losses see the bf16 rounding of the first layer only
        assert losses[i].item() == pytest.approx(task_loss(t, out[t], y[t]).item(), rel=2e-2)
    for name, p in model.named_parameters():
        got, want = step.params.grad_of(dict(twin.named_parameters())[name]), p.grad
        # bf16 keeps 8 bits (~0.4 % per value); inputs, activations and the backward signal each round.
        # MMoE's gates come out of the same bf16 product, and their softmax passes the rounding on.
        assert (got - want).norm() <= (5e-2 if model_name == "mmoe" else 3e-2) * want.norm(), name
        assert torch.nn.functional.cosine_similarity(got.flatten(), want.flatten(), dim=0) > 0.999, name
    assert step.params.flat.dtype == torch.float32  # the optimiser still updates fp32 weights


@pytest.mark.parametrize(
    "model, changes, native, expected",
    [
        ("hard", {}, True, ("fast", "bf16")),
        ("hard", {}, False, ("fast", "fp32")),
        ("hard", {"precision": "fp32"}, True, ("fast", "fp32")),
        ("hard", {"path": "autograd"}, True, ("autograd", "fp32")),  # autocast would cost more than it saves
        ("hard", {"loss_weighting": "uncertainty"}, True, ("autograd", "fp32")),
        ("stl", {}, True, ("fast", "bf16")),
        ("mmoe", {}, True, ("fast", "bf16")),
        ("mmoe", {"loss_weighting": "pcgrad"}, True, ("autograd", "fp32")),
        ("stl", {}, False, ("fast", "fp32")),
        ("cross_stitch", {}, True, ("fast", "bf16")),
        ("cnn", {}, True, ("autograd", "bf16")),
        ("cnn", {}, False, ("autograd", "fp32")),
    ],
)
def test_auto_precision_takes_bf16_only_where_it_is_native_and_pays(model, changes, native, expected, monkeypatch):
    from mtl_core.data import make_synthetic
    from mtl_core.training import steps

    monkeypatch.setattr(steps, "bf16_is_native", lambda device: native)
    cfg = TrainConfig.preset(model, data="synthetic", **changes)
    assert cfg.precision == changes.get("precision", "auto")  # every preset asks for auto
    training = Training(cfg, make_synthetic(256, 64))
    assert (training.path, training.precision) == expected
    assert training.summary()["precision"] == expected[1]


@pytest.mark.parametrize(
    "changes, reason",
    [
        (dict(model="cnn", tasks=("digit", "even")), "no hand-written step"),
        (dict(loss_weighting="uncertainty"), "learns its weights through autograd"),
        (dict(optimizer="sgd"), "not sgd"),
        (dict(path="autograd"), "asks for autograd"),
    ],
)
def test_runs_that_need_autograd_say_why(changes, reason, synthetic):
    training = Training(TrainConfig.preset("hard", data="synthetic").replace(**changes), synthetic)
    assert training.path == "autograd" and reason in training.path_note
    assert training.summary()["path"] == "autograd"


@pytest.mark.parametrize("kernel", ["C++", "Python"])
def test_a_diverging_fast_run_stops_at_the_first_bad_loss_and_keeps_its_last_good_state(synthetic, kernel, monkeypatch):
    from dataclasses import replace

    use_kernel(kernel, monkeypatch)
    bad = replace(synthetic, train_x=synthetic.train_x.clone())
    bad.train_x[300] = float("nan")  # one poisoned digit: its batch gives a NaN loss
    cfg = TrainConfig.preset("hard", epochs=3, data="synthetic", device=kernel_device(kernel))
    training = Training(cfg, bad)
    start = {k: v.clone() for k, v in training.model.state_dict().items()}
    records = list(training.records())
    assert training.path == "fast" and training.kernel == kernel
    assert training.status == "diverged" and records == []
    order = torch.randperm(bad.n_train, generator=torch.Generator().manual_seed(cfg.seed))  # epoch 1's shuffle
    first_bad = (order == 300).nonzero().item() // cfg.batch_size + 1
    assert "non-finite loss" in training.reason and f"epoch 1, batch {first_bad};" in training.reason
    for k, v in training.model.state_dict().items():
        torch.testing.assert_close(v, start[k])  # the last good state: before any step of epoch 1


def test_flat_adam_gives_the_tail_its_own_learning_rate_like_a_second_group():
    from mtl_core.training.fastpath import FlatAdam

    torch.manual_seed(0)
    ours = torch.nn.Parameter(torch.randn(100))
    base, alphas = torch.nn.Parameter(ours.detach()[:92].clone()), torch.nn.Parameter(ours.detach()[92:].clone())
    reference = torch.optim.Adam([{"params": [base]}, {"params": [alphas], "lr": 3e-1}], lr=3e-3, fused=True)
    flat = FlatAdam(ours, lr=3e-3, tail=8, tail_lr_mult=100.0)
    scheduler = torch.optim.lr_scheduler.StepLR(flat, step_size=3, gamma=0.5)
    reference_scheduler = torch.optim.lr_scheduler.StepLR(reference, step_size=3, gamma=0.5)
    for _ in range(10):
        g = torch.randn(100)
        ours.grad, base.grad, alphas.grad = g.clone(), g[:92].clone(), g[92:].clone()
        flat.step(), reference.step()
        scheduler.step(), reference_scheduler.step()
    torch.testing.assert_close(ours.detach(), torch.cat([base.detach(), alphas.detach()]), rtol=1e-6, atol=1e-7)


def test_flat_parameters_keep_each_parameters_layout_and_take_autograds_gradients_in_place():
    from mtl_core.training.fastpath import FlatParameters

    conv = torch.nn.Conv2d(3, 4, 3).to(memory_format=torch.channels_last)
    before = conv.weight.detach().clone()
    flat = FlatParameters(list(conv.parameters()))
    flat.bind_grads()
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and torch.equal(conv.weight, before)
    x = torch.randn(2, 3, 5, 5)
    conv(x).sum().backward()
    reference = torch.nn.Conv2d(3, 4, 3)
    reference.load_state_dict(conv.state_dict())
    reference(x).sum().backward()
    assert torch.equal(flat.grad_of(conv.weight), reference.weight.grad)
    assert conv.weight.grad.data_ptr() == flat.grad_of(conv.weight).data_ptr()  # written in place


@pytest.mark.parametrize("model_name", ["mmoe", "cross_stitch_cnn"])
def test_the_autograd_path_on_one_flat_adam_trains_as_torchs_adam(model_name, synthetic):
    """A static-weight run on autograd keeps its gradients in one flat buffer and updates it with one
    fused Adam call (alphas at their own learning rate); torch's Adam over the same parameters takes
    the same steps."""
    from mtl_core.training.fastpath import FlatAdam
    from mtl_core.training.steps import make_optimizer

    cfg = TrainConfig.preset(
        model_name, epochs=2, batch_size=32, max_batches=6, data="synthetic", precision="fp32", weight_decay=0.01
    ).replace(path="autograd", device="cpu")
    # MMoE has a hand-written step too: this is about the autograd path. On the CPU: on a GPU, cuDNN's and
    # TF32's rounding would blur the match.
    if model_name == "cross_stitch_cnn":
        cfg = cfg.replace(alpha_lr_mult=50.0, alpha_init="convex-0.9", scheduler="none")
    ours = Training(cfg, synthetic)
    assert isinstance(ours.optimizer, FlatAdam) and ours.path == "autograd"
    ours_records = list(ours.records())  # one run after the other: dropout draws from the global RNG
    theirs = Training(cfg, synthetic)
    theirs.step.optimizer = make_optimizer(cfg, theirs.model, theirs.device)  # torch's fused Adam, per parameter
    for a, b in zip(ours_records, theirs.records(), strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6)
    for (name, p), q in zip(ours.model.named_parameters(), theirs.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)
