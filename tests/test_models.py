"""Every registered model: shapes, finiteness, backward, exact parameter counts; fused == plain."""

import pytest
import torch

from mtl_core.models import (
    ALPHA_INITS,
    MODELS,
    STLMLP,
    CrossStitchMLP,
    PlainCrossStitch,
    PlainSTL,
    alpha_matrix,
    build_model,
    count_parameters,
)

# SPEC.md's exact counts for the default tasks; the CNN count is ours ("about 442,000").
EXPECTED_PARAMS = {
    "stl": 104_706,
    "hard": 52_386,
    "cross_stitch": 104_714,
    "mmoe": 107_846,
    "cnn": 441_999,
    "stl_cnn": 1_703_631,  # 4 x 420,544 (conv 320 + BN 64 + conv 18,496 + BN 128 + FC 401,536) + the 4 heads
    "cross_stitch_cnn": 1_703_679,  # the same + 3 units x 4 x 4 alphas
    # Sener & Koltun's LeNet (Figure 5): conv 260 + conv 5,020 + FC 320->50 16,050 = 21,330, heads 50->10 510 each
    "lenet": 21_330 + 2 * 510,
    "stl_lenet": 2 * (21_330 + 510),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_forward_shapes_finite_and_backward(name):
    torch.manual_seed(0)
    model = build_model(name)
    out = model(torch.randn(7, 1, 28, 28))
    assert set(out) == set(MODELS[name].default_tasks)
    for task, y in out.items():
        assert y.shape[0] == 7 and torch.isfinite(y).all(), task
        if task == "value":
            assert y.shape == (7,) and (y >= 0).all() and (y <= 1).all()
    sum(y.float().pow(2).mean() for y in out.values()).backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", list(MODELS))
def test_exact_parameter_counts(name):
    assert count_parameters(build_model(name)) == EXPECTED_PARAMS[name]


def test_stl_is_one_52353_network_per_task():
    assert count_parameters(STLMLP(("even",))) == 52_353
    assert count_parameters(PlainSTL(("even",))) == 52_353
    assert count_parameters(PlainSTL(("even", "mult3"))) == EXPECTED_PARAMS["stl"]


@pytest.mark.parametrize("tasks", [("even", "mult3"), ("digit", "even", "value")])
def test_fused_stl_equals_plain_columns(tasks):
    torch.manual_seed(1)
    fused = STLMLP(tasks)
    plain = PlainSTL.from_fused(fused)
    assert count_parameters(plain) == count_parameters(fused)
    x = torch.randn(9, 1, 28, 28)
    a, b = fused(x), plain(x)
    for t in tasks:
        torch.testing.assert_close(a[t], b[t], rtol=1e-5, atol=1e-5)


def test_fused_cross_stitch_equals_plain_with_learned_alphas():
    torch.manual_seed(2)
    fused = CrossStitchMLP(("even", "mult3", "gt4"), alpha_init="convex-0.9")
    with torch.no_grad():
        for a in fused.alpha:
            a.add_(0.1 * torch.randn_like(a))  # not a special matrix
    plain = PlainCrossStitch.from_fused(fused)
    x = torch.randn(5, 1, 28, 28)
    out_f, out_p = fused(x), plain(x)
    for t in fused.tasks:
        torch.testing.assert_close(out_f[t], out_p[t], rtol=1e-5, atol=1e-5)
    # Gradients agree too, so training the fused model trains the textbook one.
    sum(v.sum() for v in out_f.values()).backward()
    sum(v.sum() for v in out_p.values()).backward()
    torch.testing.assert_close(fused.w1.grad[1], plain.columns["mult3"].fc1.weight.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(fused.alpha[0].grad, plain.alpha[0].grad, rtol=1e-4, atol=1e-6)


def test_cross_stitch_with_identity_alphas_is_independent_columns():
    torch.manual_seed(3)
    cs = CrossStitchMLP(("even", "mult3"), alpha_init="identity")
    stl = STLMLP(("even", "mult3"))
    missing, unexpected = stl.load_state_dict(cs.state_dict(), strict=False)
    assert not missing and all(k.startswith("alpha") for k in unexpected)
    x = torch.randn(6, 1, 28, 28)
    for t in ("even", "mult3"):
        torch.testing.assert_close(cs(x)[t], stl(x)[t])
    # ... and a non-identity alpha really mixes them.
    cs2 = CrossStitchMLP(("even", "mult3"), alpha_init="convex-0.5")
    cs2.load_state_dict({k: v for k, v in cs.state_dict().items() if not k.startswith("alpha")}, strict=False)
    assert not torch.allclose(cs2(x)["even"], stl(x)["even"])


def test_fused_stl_with_one_adam_trains_like_separate_adams():
    """The claim behind fusing STL: one Adam over stacked columns == one Adam per task's network."""
    from mtl_core.metrics import task_loss

    torch.manual_seed(4)
    fused = STLMLP(("even", "mult3"))
    plain = PlainSTL.from_fused(fused)
    separate = {t: PlainSTL((t,)) for t in fused.tasks}
    for t, net in separate.items():
        net.columns[t].load_state_dict(plain.columns[t].state_dict())
    opt_f = torch.optim.Adam(fused.parameters(), lr=1e-2)
    opts = {t: torch.optim.Adam(n.parameters(), lr=1e-2) for t, n in separate.items()}
    for _ in range(5):
        x = torch.randn(16, 1, 28, 28)
        y = torch.randint(0, 2, (16,))
        opt_f.zero_grad()
        out = fused(x)
        sum(task_loss(t, out[t], y) for t in fused.tasks).backward()
        opt_f.step()
        for t, net in separate.items():
            opts[t].zero_grad()
            task_loss(t, net(x)[t], y).backward()
            opts[t].step()
    x = torch.randn(4, 1, 28, 28)
    for t in fused.tasks:
        torch.testing.assert_close(fused(x)[t], separate[t](x)[t], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("init", list(ALPHA_INITS))
def test_alpha_initialisations(init):
    m = alpha_matrix(init, 2)
    assert m.shape == (2, 2)
    cs = CrossStitchMLP(("even", "mult3"), alpha_init=init)
    assert cs.alphas() == [m.tolist(), m.tolist()]
    if init.startswith("convex"):
        torch.testing.assert_close(m.sum(dim=1), torch.ones(2))
    torch.testing.assert_close(alpha_matrix("convex-0.9", 2), torch.tensor([[0.9, 0.1], [0.1, 0.9]]))


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ValueError, match="valid models: " + ", ".join(MODELS)):
        build_model("resnet")
    with pytest.raises(ValueError, match="valid tasks"):
        build_model("hard", ("even", "prime"))
    with pytest.raises(ValueError, match="valid: identity"):
        build_model("cross_stitch", alpha_init="zeros")


def test_mmoe_gates_mix_shared_experts_per_task():
    """Ma et al. 2018: each task's gate is a softmax over the shared experts, and a task's answer comes
    only through its gate: shut a gate onto one expert and the other expert no longer matters to it."""
    from mtl_core.models import MMoEMLP

    torch.manual_seed(0)
    model = build_model("mmoe", ("even", "mult3"))
    assert isinstance(model, MMoEMLP) and [p.shape[0] for p in model.shared_parameters()] == [2, 2, 2, 2]
    x = torch.randn(6, 1, 28, 28)
    gates = model.gate_weights(x)
    assert set(gates) == {"even", "mult3"}
    torch.testing.assert_close(gates["even"].sum(dim=1), torch.ones(6))
    with torch.no_grad():
        model.gates["even"].weight.zero_()
        model.gates["even"].bias.copy_(torch.tensor([30.0, -30.0]))  # even reads expert 0 only
        before = model(x)
        model.w1[1].mul_(3.0)  # change expert 1
        after = model(x)
    torch.testing.assert_close(after["even"], before["even"])
    assert not torch.allclose(after["mult3"], before["mult3"])


@pytest.mark.parametrize("bf16", [False, True])
def test_the_cnn_trunk_pools_before_its_relu_with_the_tutorials_outputs_and_gradients(bf16):
    """The trunk runs conv-BN-pool-ReLU (and keeps the gradient channels_last through the flatten) for
    speed; the tutorial's conv-BN-ReLU-pool with a plain Flatten gives the same numbers, bit for bit."""
    import copy

    from torch import nn

    from mtl_core.models import build_model

    torch.manual_seed(0)
    ours = build_model("cnn").to(memory_format=torch.channels_last)
    tutorial = copy.deepcopy(ours)
    for block in (0, 4):  # conv, BN, ReLU, pool
        tutorial.trunk[block + 2], tutorial.trunk[block + 3] = nn.ReLU(), nn.MaxPool2d(2)
    tutorial.trunk[8] = nn.Flatten()
    kinds = (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.ReLU)
    assert all(isinstance(m, kind) for m, kind in zip(ours.trunk[:4], kinds, strict=True))
    x = torch.randn(16, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    outputs = []
    for model in (ours, tutorial):
        torch.manual_seed(1)  # the same dropout masks
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(x)
        sum(v.float().square().sum() for v in out.values()).backward()
        outputs.append(out)
    for task in outputs[0]:
        assert torch.equal(outputs[0][task], outputs[1][task]), task
    for (name, a), b in zip(ours.named_parameters(), tutorial.parameters()):
        assert torch.equal(a.grad, b.grad), name
    # The gradient reaching the second block's pooling is channels_last, as its input is.
    h = x
    for layer in ours.trunk[:8]:
        h = layer(h)
    seen = []
    h.register_hook(lambda grad: seen.append(grad.is_contiguous(memory_format=torch.channels_last)))
    ours.trunk[8](h).sum().backward()
    assert seen == [True]


@pytest.mark.parametrize("momentum", [0.1, None])
def test_the_first_conv_and_batchnorm_fold_into_one_convolution_with_batchnorms_numbers(momentum):
    """mtl_core/models/batchfold.py against Conv2d then BatchNorm2d in training mode, in float64: the output,
    every parameter's gradient and the running statistics (two steps, so the momentum shows)."""
    import copy

    from torch import nn

    from mtl_core.models.batchfold import folded_conv_bn, patch_moments

    torch.manual_seed(0)
    conv, bn = nn.Conv2d(1, 8, 3, padding=1).double(), nn.BatchNorm2d(8, momentum=momentum).double()
    nn.init.uniform_(bn.weight, 0.5, 1.5)
    nn.init.uniform_(bn.bias, -0.5, 0.5)
    conv2, bn2 = copy.deepcopy(conv), copy.deepcopy(bn)
    images = torch.randn(40, 1, 28, 28).double()
    sums, grams = patch_moments(images, conv)
    for batch in (slice(0, 16), slice(16, 40)):
        x = images[batch]
        expected = bn(conv(x))
        got = folded_conv_bn(conv2, bn2, x, sums[batch], grams[batch])
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)
        g = torch.randn_like(expected)
        expected.backward(g)
        got.backward(g)
    for (name, a), b in zip(
        [*conv.named_parameters(), *bn.named_parameters()], [*conv2.parameters(), *bn2.parameters()]
    ):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-7, atol=1e-9, msg=name)
    torch.testing.assert_close(bn2.running_mean, bn.running_mean, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(bn2.running_var, bn.running_var, rtol=1e-9, atol=1e-12)
    assert int(bn2.num_batches_tracked) == int(bn.num_batches_tracked) == 2


def test_a_cnn_trains_the_same_with_its_first_block_folded(synthetic):
    """A whole CNN run in float32, folded (the default) against conv + BatchNorm: the same losses to
    float precision and the same outputs after a few dozen steps."""
    from mtl_core.config import TrainConfig
    from mtl_core.training.loop import Training

    cfg = TrainConfig.preset(
        "cnn", epochs=2, batch_size=32, max_batches=12, data="synthetic", precision="fp32", device="cpu"
    )  # (on a GPU, cuDNN's and TF32's rounding would blur the comparison)
    folded = Training(cfg, synthetic)
    assert folded.step.patch_moments is not None
    folded_records = list(folded.records())
    plain = Training(cfg, synthetic)
    plain.step.patch_moments = None
    for a, b in zip(folded_records, plain.records(), strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        for task, m in a["metrics"].items():
            assert m == pytest.approx(b["metrics"][task], abs=0.02), task
    # Weights are not compared one by one: where a gradient is float noise (a bias BatchNorm cancels, a
    # weight reading an always-zero feature), Adam scales the noise up to full-size steps either way.
    folded.model.eval(), plain.model.eval()
    with torch.no_grad():
        ours, theirs = folded.model(synthetic.test_x[:256]), plain.model(synthetic.test_x[:256])
    for task in ours:
        torch.testing.assert_close(ours[task], theirs[task], rtol=0.0, atol=0.01, msg=task)


def test_stl_lenet_is_two_independent_lenets():
    """No parameter of stl_lenet reaches two tasks: each task's output moves only its own trunk and head,
    and each of those is exactly one `lenet` (trunk and head) of one task."""
    from mtl_core.models import LeNetMTL

    torch.manual_seed(0)
    model = build_model("stl_lenet", ("left", "right"))
    assert model.shared_parameters() == []
    one = LeNetMTL(("left",))
    assert count_parameters(model) == 2 * count_parameters(one)
    for task, other in (("left", "right"), ("right", "left")):
        model.zero_grad()
        model(torch.randn(5, 1, 28, 28))[task].sum().backward()
        mine = [p.grad for n, p in model.named_parameters() if f".{task}." in n]
        theirs = [p.grad for n, p in model.named_parameters() if f".{other}." in n]
        assert mine and all(g is not None and g.abs().sum() > 0 for g in mine)
        assert all(g is None or not g.any() for g in theirs)
    # A task's column computes exactly what a one-task LeNet with its weights computes.
    one.trunk.load_state_dict(model.trunks["right"].state_dict())
    one.heads["left"].load_state_dict(model.heads["right"].state_dict())
    x = torch.randn(4, 1, 28, 28)
    assert torch.equal(one(x)["left"], model(x)["right"])


def test_lenet_shares_its_trunk_and_keeps_its_output():
    model = build_model("lenet")
    assert [id(p) for p in model.shared_parameters()] == [id(p) for p in model.trunk.parameters()]
    out = model(torch.randn(3, 1, 28, 28))
    assert model.representation.shape == (3, 50)
    assert torch.equal(model.heads["left"](model.representation), out["left"])
