"""The C++ step and batch loop (mtl_core/native_steps.cpp): gradients against autograd, whole runs
against the Python loop, and what a run reports about which loop trained it."""

from __future__ import annotations

import copy

import pytest
import torch
from native_kernel import use_kernel  # tests/native_kernel.py

from mtl_core import native
from mtl_core.config import TrainConfig
from mtl_core.fastpath import make_step
from mtl_core.metrics import task_loss
from mtl_core.models import build_model
from mtl_core.tasks import make_targets
from mtl_core.train import Training

BINARY = ("even", "mult3", "gt4")  # the study's kind of task: one logit each
MIXED = ("digit", "even", "value")  # ten logits (softmax), one (BCE), one (MSE on the sigmoid)


@pytest.fixture
def module(monkeypatch):
    use_kernel("C++", monkeypatch)
    return native.get()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])  # float: the AVX-512 products and loops
@pytest.mark.parametrize("tasks", [BINARY, MIXED])
@pytest.mark.parametrize("model_name", ["hard", "stl", "cross_stitch", "mmoe"])
def test_the_cpp_step_gives_autograds_gradients(module, model_name, tasks, dtype, synthetic):
    weights = {"even": 2.5, "gt4": 0.5, "value": 10.0}
    torch.manual_seed(0)
    model = build_model(model_name, tasks).to(dtype)
    for a in model.alpha_parameters():  # lopsided alphas: a transposed mixing gradient shows
        a.data = torch.eye(3, dtype=dtype) + 0.3 * torch.rand(3, 3).to(dtype)
    twin = copy.deepcopy(model)
    x = synthetic.train_x[:61].to(dtype).flatten(1)  # 61: no whole number of 16-wide vectors
    y = {t: v.to(dtype) if v.is_floating_point() else v for t, v in make_targets(synthetic.train_y[:61], tasks).items()}
    out = model(x)
    sum(weights.get(t, 1.0) * task_loss(t, out[t], y[t]) for t in tasks).backward()

    step = make_step(twin, weights)
    kind, params, grads = step.native_args()
    args = (step.weights, step.native_kinds, step.native_offsets, False)
    losses = module.step(kind, x, step.prepare_targets(y), params, grads, *args)
    double = dtype == torch.float64
    for i, t in enumerate(tasks):
        assert losses[i].item() == pytest.approx(task_loss(t, out[t], y[t]).item(), rel=1e-12 if double else 1e-5)
    for (name, p), q in zip(twin.named_parameters(), model.parameters()):
        tolerance = {"rtol": 1e-6, "atol": 1e-9} if double else {"rtol": 1e-4, "atol": 1e-6}
        torch.testing.assert_close(step.params.grad_of(p), q.grad, **tolerance, msg=f"gradient of {name}")


@pytest.mark.parametrize("m, k, n", [(32, 64, 128), (64, 32, 96), (7, 13, 37), (1, 1, 1), (5, 3, 17), (4, 64, 80)])
def test_the_second_layers_products_are_matrix_products(own_simd, m, k, n):
    """native_matmul.cpp's three forms against float64 products, on sizes with and without whole blocks of 4
    rows and 16 or 64 columns; the bias and the ReLU too, a NaN kept through it as clamp_min keeps it."""
    g = torch.Generator().manual_seed(m * 1000 + k * 10 + n)
    a, b, bias = torch.randn(m, k, generator=g), torch.randn(k, n, generator=g), torch.randn(m, generator=g)
    b[0, 0] = float("nan")
    exact = a.double() @ b.double()
    with_bias = (exact + bias.double()[:, None]).clamp_min(0)
    close = {"rtol": 1e-5, "atol": 1e-5, "equal_nan": True}
    torch.testing.assert_close(own_simd.small_matmul(a, b, None, False, "nn"), exact.float(), **close)
    torch.testing.assert_close(own_simd.small_matmul(a, b, bias, True, "nn"), with_bias.float(), **close)
    torch.testing.assert_close(own_simd.small_matmul(a.t().contiguous(), b, None, False, "tn"), exact.float(), **close)
    # the weights' gradient form d x h^T: a (m, n) against b (k, n)
    h = torch.randn(k, n, generator=g)
    d = torch.randn(m, n, generator=g)
    torch.testing.assert_close(
        own_simd.small_matmul(d, h, None, False, "nt"), (d.double() @ h.double().t()).float(), **close
    )


def test_the_relu_gradient_is_threshold_backwards_and_sums_its_rows(own_simd):
    g = torch.Generator().manual_seed(3)
    d, r = torch.randn(5, 37, generator=g), torch.randn(5, 37, generator=g).clamp_min(0)
    r[0, :3] = torch.tensor([float("nan"), 0.0, -0.0])  # NaN > 0 is false, yet threshold_backward keeps it
    out, sums = own_simd.relu_grad(d, r)
    expected = torch.ops.aten.threshold_backward(d, r, 0.0)
    assert torch.equal(out, expected) and out[0, 0] == d[0, 0] and out[0, 1] == 0 == out[0, 2]
    torch.testing.assert_close(sums, expected.sum(1, keepdim=True))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.int64])
def test_the_loops_gather_is_index_select(module, dtype):
    """The batch gather (rows prefetched ahead) gives index_select's rows, repeats and the last row included,
    and refuses an index out of range rather than reading past the set."""
    all_rows = (torch.arange(50 * 7).reshape(50, 7) * 3 - 100).to(dtype)
    idx = torch.tensor([49, 0, 3, 3, 17, 49, 1, 2, 5])
    assert torch.equal(module.gather_rows(all_rows, idx), all_rows.index_select(0, idx))
    many = torch.randint(0, 50, (101,), generator=torch.Generator().manual_seed(0))  # several threads' chunks
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            assert torch.equal(module.gather_rows(all_rows, many), all_rows.index_select(0, many))
    finally:
        torch.set_num_threads(before)
    assert module.gather_rows(all_rows, idx[:0]).shape == (0, 7)
    for bad in (50, -1):
        with pytest.raises(RuntimeError, match="out of range for 50 rows"):
            module.gather_rows(all_rows, torch.tensor([0, bad]))


def test_a_class_target_outside_the_head_is_refused_not_read_past(module):
    step = make_step(build_model("hard", ("digit", "even")), {})
    kind, params, grads = step.native_args()
    targets = torch.tensor([[3.0, 1.0], [10.0, 0.0]])  # class 10 of a 10-class head
    with pytest.raises(RuntimeError, match="outside the head's 10 classes"):
        heads = (step.native_kinds, step.native_offsets)
        module.step(kind, torch.randn(2, 784), targets, params, grads, step.weights, *heads, False)


@pytest.mark.parametrize(
    "model_name, changes",
    [
        ("stl", {}),
        ("cross_stitch", {"alpha_init": "convex-0.9", "alpha_lr_mult": 100.0}),  # two Adam calls per step
        ("cross_stitch", {"optimizer": "adamw", "weight_decay": 0.01, "precision": "bf16"}),
        ("hard", {"precision": "bf16", "weight_decay": 0.01}),  # bf16: the first layer's kept forms
        ("mmoe", {"precision": "bf16"}),  # its first layer holds the gates too
        ("hard", {"loss_weights": {"mult3": 3.0}}),
        ("hard", {"tasks": MIXED, "loss_weights": {"value": 10.0}}),
        ("cross_stitch", {"tasks": MIXED, "alpha_init": "convex-0.9", "alpha_lr_mult": 100.0}),
        ("stl", {"tasks": ("digit", "value")}),
        ("mmoe", {}),
        ("mmoe", {"tasks": MIXED, "loss_weights": {"value": 10.0}}),
        ("cross_stitch", {"precision": "bf16", "alpha_lr_mult": 100.0, "own_adam": False}),  # torch's Adam
        ("hard", {"own_adam": False}),
    ],
)
def test_the_cpp_loop_trains_as_the_python_loop(model_name, changes, synthetic, monkeypatch):
    """The same maths: an epoch of 64 steps agrees to float rounding, parameters and optimiser state
    alike (the C++ loop computes the losses and sums in its own loops and order; hard sharing's Python
    step is batch-major besides). Longer runs drift apart as any two roundings do."""
    changes = dict(changes)
    if not changes.pop("own_adam", True):  # the C++ loop with torch's fused Adam, as on CPUs without AVX-512
        monkeypatch.setenv("MTL_NATIVE_ADAM", "0")
    cfg = TrainConfig.preset(
        model_name, epochs=1, batch_size=8, data="synthetic", device="cpu", precision="fp32"
    ).replace(**changes)
    runs = {}
    for kernel in ("C++", "Python"):
        use_kernel(kernel, monkeypatch)
        training = Training(cfg, synthetic)
        assert training.kernel == kernel
        (record,) = training.records()
        flat = training.fast.params.flat
        runs[kernel] = (record, flat.detach().clone(), flat.grad.clone(), training.optimizer.state[flat])
    (fast, fast_flat, fast_grad, fast_state), (slow, slow_flat, slow_grad, slow_state) = runs["C++"], runs["Python"]
    for t in cfg.tasks:
        assert fast["train_loss"][t] == pytest.approx(slow["train_loss"][t], rel=1e-4)
    assert fast_state["step"].item() == slow_state["step"].item() == synthetic.n_train // 8
    # bf16: a product rounded to 8 bits in one loop and not the other (sums in another order) moves a few
    # small weights by that rounding
    bf16 = cfg.precision == "bf16"
    torch.testing.assert_close(fast_flat, slow_flat, rtol=1e-4, atol=5e-5 if bf16 else 1e-5)
    torch.testing.assert_close(
        fast_state["exp_avg_sq"], slow_state["exp_avg_sq"], rtol=1e-2 if bf16 else 1e-3, atol=1e-12
    )
    # the last step's gradient too: the C++ loop keeps its bf16 first layer's in bf16 and hands it back
    torch.testing.assert_close(fast_grad, slow_grad, rtol=2e-2, atol=1e-4)


def _adam_states(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, generator=g), torch.zeros(n), torch.zeros(n)


def _gradient(n: int, step: int) -> torch.Tensor:
    """Gradients over many magnitudes (1e-6 to 10), new each step."""
    g = torch.Generator().manual_seed(1000 + step)
    return torch.randn(n, generator=g) * 10.0 ** torch.randint(-6, 2, (n,), generator=g).float()


@pytest.fixture
def own_simd(module):
    if not module.avx512_supported():
        pytest.skip("this CPU has no AVX-512: the C++ loop calls torch's kernels instead")
    return module


@pytest.fixture
def own_adam(own_simd):
    return own_simd


@pytest.mark.parametrize("decoupled, decay", [(False, 0.0), (False, 0.01), (True, 0.01)])
@pytest.mark.parametrize("n", [104_714, 64, 7])  # cross-stitch's buffer; whole blocks of 16; a tail alone
def test_the_loops_adam_is_torchs_fused_adam(own_adam, decoupled, decay, n):
    """native_adam.cpp against torch's `_fused_adam_` / `_fused_adamw_` over 30 steps: equal bit for bit
    on every whole block of 16 (torch's vector body, which it copies), and to the last bit on the last
    n % 16 elements (torch's scalar tail rounds on its own)."""
    kernel = torch._fused_adamw_ if decoupled else torch._fused_adam_
    p, m, v = _adam_states(n)
    ours = [t.clone() for t in (p, m, v)]
    step = torch.zeros(())
    for k in range(1, 31):
        grad = _gradient(n, k)
        step += 1
        kernel([p], [grad], [m], [v], [], [step], lr=1e-3, beta1=0.9, beta2=0.999, weight_decay=decay, eps=1e-8,
               amsgrad=False, maximize=False)  # fmt: skip
        own_adam.adam_step(*ours[:1], grad, *ours[1:], None, float(k), 1e-3, 0.9, 0.999, decay, 1e-8, decoupled, 2)
    body = n - n % 16
    for theirs, mine in zip((p, m, v), ours):
        assert torch.equal(theirs[:body], mine[:body])
        torch.testing.assert_close(theirs[body:], mine[body:], rtol=1e-6, atol=0)


def test_the_loops_adam_reads_a_bf16_gradient_and_writes_a_bf16_copy(own_adam):
    """The first layer's stretch under bf16: the bf16 gradient read as its float value, and the copy equal to
    torch's `.to(bfloat16)` of the updated weights, rounding ties to even, denormals, overflow and NaN too."""
    n = 4099
    p, m, v = _adam_states(n)
    special = [0x3F808000, 0x3F818000, 0x00008000, 0x80018000, 0x7F7FFFFF, 0x7F800000, 0xFF800000, 0x0]
    special += [0x7FC00001, 0x7F800001, 0xFFFFFFFF]  # NaNs: one a plain rounding would make inf, one 0
    k = len(special)
    # ties both ways, denormals, the largest float (rounds to inf), +-inf, 0, NaNs
    p[:k] = torch.tensor(special, dtype=torch.int64).to(torch.int32).view(torch.float32)
    grad = _gradient(n, 1).to(torch.bfloat16)
    grad[:k] = 0  # with lr 0 below the crafted values are copied as they are
    as_float = [t.clone() for t in (p, m, v)]
    copy = torch.empty(n, dtype=torch.bfloat16)
    for lr in (0.0, 1e-3):  # 0: the crafted values themselves are copied
        own_adam.adam_step(p, grad, m, v, copy, 1.0, lr, 0.9, 0.999, 0.0, 1e-8, False, 1)
        own_adam.adam_step(*as_float[:1], grad.float(), *as_float[1:], None, 1.0, lr, 0.9, 0.999, 0.0, 1e-8, False, 1)
        assert torch.equal(p.view(torch.int32), as_float[0].view(torch.int32))
        expected = p.to(torch.bfloat16)
        nan = expected.isnan()
        assert torch.equal(copy.isnan(), nan) and nan[k - 3 : k].all()
        assert torch.equal(copy[~nan].view(torch.int16), expected[~nan].view(torch.int16))


def test_the_loops_adam_gives_the_same_on_one_thread_or_two(own_adam):
    runs = []
    for threads in (1, 2):
        p, m, v = _adam_states(50_000)
        for k in range(1, 4):
            own_adam.adam_step(
                p, _gradient(50_000, k), m, v, None, float(k), 1e-3, 0.9, 0.999, 0.0, 1e-8, False, threads
            )
        runs.append(torch.cat([p, m, v]))
    assert torch.equal(*runs)


def test_stop_is_seen_within_a_chunk_of_batches(module, synthetic):
    """The C++ loop runs a few batches at a time; Stop between them ends the run as in Python."""
    calls = []

    def stop() -> bool:
        calls.append(1)
        return len(calls) > 2

    training = Training(
        TrainConfig.preset("hard", epochs=2, batch_size=8, data="synthetic", device="cpu"), synthetic, stop=stop
    )
    assert training.kernel == "C++"
    assert list(training.records()) == []
    assert training.status == "cancelled" and len(calls) == 3


def test_a_run_says_which_loop_trained_it(synthetic, monkeypatch):
    use_kernel("Python", monkeypatch)
    training = Training(TrainConfig.preset("cross_stitch", data="synthetic", device="cpu"), synthetic)
    assert training.summary()["kernel"] == "Python" and "MTL_NATIVE=0" in training.path_note
    use_kernel("C++", monkeypatch)
    for model in ("stl", "hard", "cross_stitch", "mmoe"):
        for tasks in (None, ("even", "digit")):  # the study's pair; a 10-class head too
            cfg = TrainConfig.preset(model, tasks=tasks, data="synthetic", device="cpu")
            training = Training(cfg, synthetic)
            assert (training.kernel, training.path, training.path_note) == ("C++", "fast", "")
    assert (
        Training(TrainConfig.preset("hard", path="autograd", data="synthetic", device="cpu"), synthetic).kernel is None
    )


@pytest.mark.parametrize("which", range(len(native.SOURCES) + len(native.HEADERS)))
def test_an_edited_source_builds_under_a_new_name(tmp_path, monkeypatch, which):
    before = native.module_name()
    files = [*native.SOURCES, *native.HEADERS]
    edited = tmp_path / files[which].name
    edited.write_bytes(files[which].read_bytes() + b"\n// edited\n")
    files[which] = edited
    n = len(native.SOURCES)
    monkeypatch.setattr(native, "SOURCES", tuple(files[:n]))
    monkeypatch.setattr(native, "HEADERS", tuple(files[n:]))
    assert native.module_name() != before and native.module_name().startswith("mtl_native_")


def test_where_it_cannot_be_built_the_python_loop_trains_and_says_why(tmp_path, synthetic, monkeypatch):
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the build folder should go")
    monkeypatch.setenv("MTL_NATIVE", "1")
    monkeypatch.setenv("MTL_NATIVE_DIR", str(blocked))
    monkeypatch.setattr(native, "_tried", False)  # forget this process's loaded module for the test
    monkeypatch.setattr(native, "_module", None)
    assert native.get() is None and "could not be built" in native.reason()
    training = Training(TrainConfig.preset("cross_stitch", epochs=1, data="synthetic", device="cpu"), synthetic)
    assert training.kernel == "Python" and "could not be built" in training.path_note
    assert list(training.records())[0]["avg_acc"] > 0.5  # and it trains


def test_the_thread_picker_runs_the_cheaper_count_and_retries_the_other():
    from mtl_core.fastpath import ThreadPicker

    picker = ThreadPicker(retry=3, window=3, margin=0.05)
    # each count's first chunk (start-up) is not counted; then the two take turns until each has 3 measured
    for n in (2, 2, 1, 1, 2, 1, 2, 1):
        assert picker.choose(2) == n
        picker.record(n, (2.0 if n == 2 else 1.0) if n in picker.warm else 50.0)
    runs = []
    for _ in range(8):
        n = picker.choose(2)
        runs.append(n)
        picker.record(n, 1.0 if n == 1 else 2.0)
    assert runs == [1, 1, 2, 1, 1, 1, 2, 1]  # the cheaper one; the other once it has sat out 3 chunks
    picker.record(2, 0.1)  # the load changed: two threads got cheap (the median of the last 3 moves after 2)
    assert picker.choose(2) == 1
    picker.record(2, 0.1)
    assert picker.choose(2) == 2
    picker.costs[1] = [0.097] * 3  # cheaper, but by less than the margin: the run keeps its cores
    assert picker.choose(2) == 2
    assert ThreadPicker().choose(1) == 1  # a run allowed one thread has nothing to pick


def test_one_slow_first_chunk_does_not_pick_the_slower_thread_count():
    """Two threads are faster, but their first measured chunk was slow (a cold cache): the pick waits for
    three chunks of each, and their medians pick two threads."""
    from mtl_core.fastpath import ThreadPicker

    picker = ThreadPicker(retry=24, window=3, margin=0.05)
    seconds = {2: iter([9.0, 3.0] + [1.0] * 8), 1: iter([9.0] + [1.5] * 8)}  # each count's first is start-up
    for _ in range(8):
        n = picker.choose(2)
        picker.record(n, next(seconds[n]))
    assert picker.choose(2) == 2


def test_a_chunk_on_its_own_thread_count_gives_the_count_back(module, synthetic):
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        training = Training(
            TrainConfig.preset("hard", epochs=1, batch_size=8, data="synthetic", device="cpu"), synthetic
        )
        batches = training._epoch_batches()
        _, bad = training.native.run(training._fast_x, training._fast_targets, batches, 0, 4, torch.zeros(2), 1)
        assert bad == -1 and torch.get_num_threads() == 2
        (record,) = training.records()
        assert record["threads"] == 2 and sum(record["thread_batches"].values()) == len(batches)
        assert set(record["thread_batches"]) == {"1", "2"}  # both were tried
    finally:
        torch.set_num_threads(before)
