"""The CNNs' max-pooling in C++ (mtl_core/native/native_pool.cpp), both twins (AVX-512 and portable): torch's
values and gradients bit for bit, ties and NaN included; the same CNN step either way; what a run reports;
exports still record torch's pooling."""

from __future__ import annotations

import copy

import pytest
import torch
from native_kernel import use_kernel  # tests/native_kernel.py
from torch.nn import functional as F

from mtl_core import native
from mtl_core.config import TrainConfig
from mtl_core.export import export_bytes
from mtl_core.models import build_model, use_native_pooling
from mtl_core.models.cnn import _MaxPool2x2, _NativeMaxPool
from mtl_core.tasks import make_targets
from mtl_core.training.loop import Training

CNN_TASKS = ("digit", "even", "gt4", "value")


@pytest.fixture(params=["simd", "portable"])
def kernels(request, monkeypatch):
    """The C++ max-pool, each test run on both twins: the AVX-512 one (skipped on CPUs without it) and the
    portable one that MTL_NATIVE_ISA=portable forces (read at each call)."""
    use_kernel("C++", monkeypatch)
    module = native.get()
    if request.param == "portable":
        monkeypatch.setenv("MTL_NATIVE_ISA", "portable")
    else:
        monkeypatch.delenv("MTL_NATIVE_ISA", raising=False)
        if not module.pool_simd():
            pytest.skip("this CPU has no AVX-512: only the portable twin runs here")
    assert module.pool_supported() and module.pool_simd() == (request.param == "simd")
    return module


def _batch_with_ties(shape, dtype) -> torch.Tensor:
    """Values from seven levels, so most 2x2 windows hold a tie, plus a few NaN and -inf."""
    g = torch.Generator().manual_seed(0)
    x = (torch.randint(-3, 4, shape, generator=g) * 0.5).to(dtype)
    flat = x.view(-1)
    spots = torch.randperm(flat.numel(), generator=g)[:24]
    flat[spots[:12]] = float("nan")
    flat[spots[12:]] = float("-inf")
    return x.contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape", [(3, 32, 28, 28), (2, 64, 14, 14), (1, 16, 2, 6)])
def test_the_cpp_max_pool_gives_torchs_values_and_gradients(kernels, dtype, shape):
    x = _batch_with_ties(shape, dtype)
    ours_in, torch_in = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours, expected = _NativeMaxPool.apply(ours_in, kernels), F.max_pool2d(torch_in, 2)
    torch.testing.assert_close(ours, expected, rtol=0, atol=0, equal_nan=True)
    assert ours.is_contiguous(memory_format=torch.channels_last)
    # An NCHW gradient (what a plain flatten hands back) as well as a channels_last one.
    for grad in (
        torch.randn(expected.shape).to(dtype),
        torch.randn(expected.shape).to(dtype).to(memory_format=torch.channels_last),
    ):
        ours_in.grad = torch_in.grad = None
        (g_ours,) = torch.autograd.grad(ours, ours_in, grad, retain_graph=True)
        (g_torch,) = torch.autograd.grad(expected, torch_in, grad, retain_graph=True)
        torch.testing.assert_close(g_ours, g_torch, rtol=0, atol=0, equal_nan=True)


def test_inputs_the_kernel_does_not_take_are_refused_with_the_reason(kernels):
    with pytest.raises(RuntimeError, match="multiple of 16"):
        kernels.max_pool2x2(torch.zeros(1, 8, 4, 4).contiguous(memory_format=torch.channels_last))
    with pytest.raises(RuntimeError, match="even"):
        kernels.max_pool2x2(torch.zeros(1, 16, 5, 4).contiguous(memory_format=torch.channels_last))
    with pytest.raises(RuntimeError, match="channels_last"):
        kernels.max_pool2x2(torch.zeros(2, 16, 4, 4))
    # The module hands such batches to torch's pooling instead.
    pool = _MaxPool2x2()
    pool.native = True
    odd = torch.randn(1, 16, 5, 5).contiguous(memory_format=torch.channels_last)
    assert torch.equal(pool(odd), F.max_pool2d(odd, 2))


@pytest.mark.parametrize("bf16", [False, True])
def test_a_cnn_step_is_the_same_with_either_pooling(kernels, synthetic, bf16, monkeypatch):
    calls = []
    pool = kernels.max_pool2x2
    monkeypatch.setattr(kernels, "max_pool2x2", lambda x: calls.append(x.shape) or pool(x))
    torch.manual_seed(0)
    model = build_model("cnn", CNN_TASKS).to(memory_format=torch.channels_last)
    twin = copy.deepcopy(model)
    assert use_native_pooling(twin) and not any(m.native for m in model.modules() if isinstance(m, _MaxPool2x2))
    x = synthetic.train_x[:32].contiguous(memory_format=torch.channels_last)
    y = make_targets(synthetic.train_y[:32], CNN_TASKS)
    grads = []
    for m in (model, twin):
        torch.manual_seed(1)  # the same dropout draws
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = m(x)
        loss = sum(
            F.mse_loss(o.float(), y[t].float()) if t == "value" else F.cross_entropy(o, y[t]) for t, o in out.items()
        )
        loss.backward()
        grads.append([p.grad for p in m.parameters()])
    assert len(calls) == 2  # the twin's two pools ran in C++, the model's in torch
    for (name, _), a, b in zip(model.named_parameters(), *grads):
        assert torch.equal(a, b), f"gradient of {name}"
    with torch.inference_mode():  # and evaluation, without autograd
        model.eval(), twin.eval()
        assert all(torch.equal(a, b) for a, b in zip(model(x).values(), twin(x).values()))


def test_a_cnn_run_says_its_pooling_ran_in_cpp(kernels, synthetic, monkeypatch):
    cfg = TrainConfig.preset("cnn", epochs=1, max_batches=2, data="synthetic", device="cpu")
    training = Training(cfg, synthetic)
    assert training.kernel == "C++ max-pool" and training.summary()["kernel"] == "C++ max-pool"
    assert list(training.records())[0]["epoch"] == 1
    nchw = Training(TrainConfig.preset("cnn", epochs=1, channels_last=False, data="synthetic", device="cpu"), synthetic)
    assert nchw.kernel is None  # the kernel takes channels_last batches only
    use_kernel("Python", monkeypatch)  # MTL_NATIVE=0: torch's pooling
    assert Training(cfg, synthetic).kernel is None


def test_where_the_kernel_does_not_pay_torchs_pooling_runs(kernels, synthetic, monkeypatch):
    monkeypatch.setattr(kernels, "pool_supported", lambda: False)
    training = Training(TrainConfig.preset("cnn", epochs=1, max_batches=1, data="synthetic", device="cpu"), synthetic)
    assert training.kernel is None
    assert not any(m.native for m in training.model.modules() if isinstance(m, _MaxPool2x2))


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_a_model_pooled_in_cpp_exports_with_torchs_pooling(kernels, synthetic, fmt):
    cfg = TrainConfig.preset("cnn", epochs=1, max_batches=1, data="synthetic", device="cpu")
    training = Training(cfg, synthetic)
    list(training.records())
    assert export_bytes(training.model, cfg, fmt)  # a Python kernel in the trace would fail the export
    traced = torch.jit.trace(
        training.model.trunk[:4], synthetic.train_x[:2].contiguous(memory_format=torch.channels_last)
    )
    assert "max_pool2d" in str(traced.inlined_graph)
