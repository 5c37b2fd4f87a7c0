"""The C++ step and batch loop (mtl_core/native/native_steps.cpp): gradients against autograd, whole runs
against the Python loop, and what a run reports about which loop trained it."""

from __future__ import annotations

import copy

import pytest
import torch
from native_kernel import use_kernel  # tests/native_kernel.py

from mtl_core import native
from mtl_core.config import TrainConfig
from mtl_core.metrics import task_loss
from mtl_core.models import build_model
from mtl_core.tasks import make_targets
from mtl_core.training.fastpath import make_step
from mtl_core.training.loop import Training

BINARY = ("even", "mult3", "gt4")  # the study's kind of task: one logit each
MIXED = ("digit", "even", "value")  # ten logits (softmax), one (BCE), one (MSE on the sigmoid)


@pytest.fixture
def module(monkeypatch):
    use_kernel("C++", monkeypatch)
    return native.get()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
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
        ("cross_stitch", {"precision": "bf16", "alpha_lr_mult": 100.0}),
    ],
)
def test_the_cpp_loop_trains_as_the_python_loop(model_name, changes, synthetic, monkeypatch):
    """The same maths: an epoch of 64 steps agrees to float rounding, parameters and optimiser state
    alike (the C++ loop computes the losses and sums in its own loops and order; hard sharing's Python
    step is batch-major besides). Longer runs drift apart as any two roundings do."""
    cfg = TrainConfig.preset(
        model_name, epochs=1, batch_size=8, data="synthetic", device="cpu", precision="fp32"
    ).replace(**changes)
    runs = {}
    for kernel in ("C++", "Python"):
        use_kernel(kernel, monkeypatch)
        training = Training(cfg, synthetic)
        assert training.kernel == kernel
        (record,) = training.records()
        flat = training.step.hand.params.flat
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
    # the last step's gradient too
    torch.testing.assert_close(fast_grad, slow_grad, rtol=2e-2, atol=1e-4)


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


def test_isa_specific_code_lives_only_beside_its_portable_twin():
    """Every branch runs in this machine's suite: the step and loop hold no ISA-specific code (intrinsics,
    target attributes, CPU checks); the one file that does, the max-pool, has a portable twin that
    MTL_NATIVE_ISA=portable forces, and tests/test_native_pool.py runs both (STYLE.md, "Speed without a
    second codebase")."""
    markers = ("immintrin", "_mm512_", "_mm256_", "__attribute__((target", "__builtin_cpu_supports", "arm_neon")
    for source in (*native.SOURCES, *native.HEADERS):
        text = source.read_text()
        if source.name == "native_pool.cpp":
            assert "MTL_NATIVE_ISA" in text and "forward_portable" in text and "backward_portable" in text
            continue
        for marker in markers:
            assert marker not in text, f"{source.name} holds {marker}"


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
    from mtl_core.training.fastpath import ThreadPicker

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
    from mtl_core.training.fastpath import ThreadPicker

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
        step = training.step
        _, bad = step.native.run(step.x, step.targets, batches, 0, 4, torch.zeros(2), 1)
        assert bad == -1 and torch.get_num_threads() == 2
        (record,) = training.records()
        assert record["threads"] == 2 and sum(record["thread_batches"].values()) == len(batches)
        assert set(record["thread_batches"]) == {"1", "2"}  # both were tried
    finally:
        torch.set_num_threads(before)
