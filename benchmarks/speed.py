"""Benchmark: where our training time stands, against the seed pipeline and against the machine.

`python benchmarks/speed.py [--full] [--accuracy SEEDS] ...`; reads full MNIST from $MTL_DATA_DIR when it is
there (e.g. MTL_DATA_DIR=../shared/data), else the embedded subset.

For each model (the three MLPs of the seed study, and the 4-task CNN):
- seconds per epoch of a seed-faithful pipeline and of ours, measured side by side in one run, and
  the ratio. Seed-faithful = what the reference studies do: a per-sample `Dataset` (PIL image ->
  ToTensor -> Normalize), a `DataLoader` with batch 128 and shuffling, plain (unfused) Adam, and
  the plain per-column modules (two separate STL networks, each with its own pass over the data).
  Ours = the tensor-resident `Training` loop, training alone (no gradient-conflict probes, as `train`
  on the command line runs it). Seed-faithful epochs are extrapolated from `--seed-batches` batches
  (printed as such) unless `--full` is given; ours are always whole epochs. The two are measured in
  turn `--repeats` times and each keeps its fastest (this machine's noise only ever slows one down).
- the FLOP floor: the matrix-product FLOPs of one training epoch (forward and backward, counted by
  `torch.utils.flop_counter.FlopCounterMode` on the model itself) over the peak rate a GEMM probe
  measures on this machine; "x floor" is our time over that floor.
- ours with one and with two threads (`--no-threads-compare` skips it).
Then the seed table (STL pair + hard + cross-stitch, 20 epochs each), single-image prediction
time, and a verdict: each goal of issue 10 with the measured value, PASS or MISS.

`--accuracy SEEDS` instead trains the CNN's whole recipe (10 epochs) with the seed-faithful pipeline and
with ours (fp32 and auto) over SEEDS seeds, and checks the digit-accuracy goal beside what the
seed-faithful pipeline itself reaches (about 6 minutes a seed here).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from mtl_core.config import TrainConfig  # noqa: E402
from mtl_core.data import MEAN, STD, MTLData, load_data  # noqa: E402
from mtl_core.metrics import MetricAccumulator, average_accuracy, mean_std, selection_score, task_loss  # noqa: E402
from mtl_core.models import HardSharingMLP, MultiTaskCNN, MultiTaskModel, PlainCrossStitch, PlainSTL, build_model  # noqa: E402
from mtl_core.predict import predict  # noqa: E402
from mtl_core.reference import SEED_MODELS  # noqa: E402
from mtl_core.tasks import make_targets  # noqa: E402
from mtl_core.training.loop import Training  # noqa: E402
from mtl_core.training.steps import bf16_is_native  # noqa: E402

# The goals (issue 10): our epoch against the seed-faithful one, and the seed table's wall time.
MLP_GOAL = 25.0  # x the seed-faithful s/epoch, every MLP
CNN_GOAL = 3.0  # x the seed-faithful s/epoch
TABLE_GOAL_S = 30.0  # STL pair + hard + cross-stitch, 20 epochs each
ACCURACY_GOAL = 0.992  # the CNN's digit accuracy after its 10 epochs, mean over seeds (issue 10, item 3)

# GEMM shapes (m, k, n) for the probe: the MLPs' first layer forward for hard (64 wide) and for two
# columns at once (128 wide), its weight gradient (64 x B) @ (B x 784), and a large square product
# (where the BLAS is at its best). The peak is the best of them.
PROBE_SHAPES = ((128, 784, 64), (128, 784, 128), (64, 128, 784), (1024, 1024, 1024))


class SeedFaithfulMNIST(torch.utils.data.Dataset):
    """Per-sample Python, like torchvision's MNIST with transforms (the reference pipelines)."""

    def __init__(self, images_u8: np.ndarray, digits: np.ndarray, tasks: tuple[str, ...]):
        from torchvision import transforms

        self.images, self.tasks = images_u8, tasks
        self.targets = {t: v.numpy() for t, v in make_targets(torch.from_numpy(digits), tasks).items()}
        self.transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((MEAN,), (STD,))])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        from PIL import Image

        img = self.transform(Image.fromarray(self.images[i], mode="L"))
        return img, {t: torch.as_tensor(v[i]) for t, v in self.targets.items()}


def _u8(data: MTLData) -> tuple[np.ndarray, np.ndarray]:
    images = ((data.train_x.squeeze(1) * STD + MEAN) * 255).round().clamp(0, 255).to(torch.uint8).numpy()
    return images, data.train_y.numpy()


def _seed_faithful_nets(model_name: str) -> list[MultiTaskModel]:
    """The plain modules the reference pipelines train (seeded as ours are)."""
    tasks = TrainConfig.preset(model_name).tasks
    if model_name == "stl":
        return [PlainSTL((t,)) for t in tasks]  # two separate models, trained one after the other
    if model_name == "hard":
        return [HardSharingMLP(tasks)]
    if model_name == "cross_stitch":
        return [PlainCrossStitch(tasks)]
    return [MultiTaskCNN(tasks)]


def _seed_faithful_loader(net: MultiTaskModel, data: MTLData, seed: int = 0) -> torch.utils.data.DataLoader:
    images, digits = _u8(data)
    return torch.utils.data.DataLoader(
        SeedFaithfulMNIST(images, digits, net.tasks),
        batch_size=128,
        shuffle=True,
        num_workers=0,
        generator=torch.Generator().manual_seed(seed),
    )


def _seed_faithful_step(net: MultiTaskModel, opt: torch.optim.Optimizer, x, y, weights: dict[str, float]) -> None:
    out = net(x)
    loss = sum(weights.get(t, 1.0) * task_loss(t, out[t], y[t]) for t in net.tasks)
    opt.zero_grad()
    loss.backward()
    opt.step()


def seed_faithful_seconds(model_name: str, data: MTLData, max_batches: int | None) -> tuple[float, int]:
    """Seconds for one seed-faithful epoch (extrapolated when max_batches cuts it) and batches timed."""
    torch.manual_seed(0)
    total, timed = 0.0, 0
    n_batches = (data.n_train + 127) // 128
    weights = TrainConfig.preset(model_name).loss_weights
    for net in _seed_faithful_nets(model_name):
        loader = _seed_faithful_loader(net, data)
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        net.train()
        t0, seen = time.perf_counter(), 0
        for x, y in loader:
            _seed_faithful_step(net, opt, x, y, weights)
            seen += 1
            if max_batches and seen >= max_batches:
                break
        total += (time.perf_counter() - t0) * n_batches / seen
        timed += seen
    return total, timed


def seed_faithful_run(model_name: str, data: MTLData, seed: int, epochs: int | None = None) -> dict:
    """The seed-faithful pipeline trained as the reference recipe says (its epochs, loss weights and step
    schedule), scored on the test set after every epoch. {"best": the best epoch (picked, as the
    references pick, on `selection_score`), "last": the last epoch}, each {"epoch", "metrics",
    "avg_acc"}. One-network models only."""
    cfg = TrainConfig.preset(model_name, seed=seed, **({"epochs": epochs} if epochs else {}))
    torch.manual_seed(seed)
    (net,) = _seed_faithful_nets(model_name)
    loader = _seed_faithful_loader(net, data, seed)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.StepLR(opt, cfg.step_size, cfg.gamma) if cfg.scheduler == "step" else None
    test_x, test_t = data.test_x, make_targets(data.test_y, cfg.tasks)  # normalised as the transform would
    best: dict | None = None
    for epoch in range(1, cfg.epochs + 1):
        net.train()
        for x, y in loader:
            _seed_faithful_step(net, opt, x, y, cfg.loss_weights)
        if sched is not None:
            sched.step()
        net.eval()
        acc = MetricAccumulator(cfg.tasks)
        with torch.no_grad():
            for start in range(0, len(test_x), 1000):
                sl = slice(start, start + 1000)
                acc.add(net(test_x[sl]), {t: v[sl] for t, v in test_t.items()})
        metrics, _ = acc.result()
        last = {"epoch": epoch, "metrics": metrics, "avg_acc": average_accuracy(metrics)}
        if best is None or selection_score(metrics) > selection_score(best["metrics"]):
            best = last
    return {"best": best, "last": last}


def ours_seconds(
    model_name: str, data: MTLData, epochs: int = 1, pick_threads: bool = True, **overrides
) -> tuple[float, Training]:
    """Mean seconds per training epoch (evaluation excluded, as in the seed-faithful timing), training
    alone as `train` on the command line runs it: without the gradient-conflict probes the dashboard's
    runs add (`benchmarks/conflict_cost.py` times those), since the seed-faithful pipeline has none."""
    cfg = TrainConfig.preset(model_name, epochs=epochs, **overrides)
    training = Training(cfg, data, conflict_probes=0, pick_threads=pick_threads)
    records = list(training.records())
    return statistics.mean(r["train_only_seconds"] for r in records), training


def prediction_ms(model_name: str, repeats: int = 200) -> float:
    model = build_model(model_name).eval()
    image = np.random.default_rng(0).standard_normal((1, 28, 28)).astype(np.float32)
    predict(model, image)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        predict(model, image)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


# ----------------------------------------------------------------------------- the FLOP floor


def _step_flops(model: torch.nn.Module, batch_size: int) -> int:
    """FLOPs of the matrix products in one forward and backward pass on a batch, as FlopCounterMode
    counts them (mm, addmm, bmm, baddbmm, convolution and their backward; 2 per multiply-add). The
    backward starts from the sum of the outputs: a loss does no matrix products of its own."""
    x = torch.randn(batch_size, 1, 28, 28)
    with FlopCounterMode(display=False) as counter:
        out = model(x)
        sum(o.float().sum() for o in out.values()).backward()
    return counter.get_total_flops()


def flops_per_epoch(model_name: str, n_train: int, batch_size: int = 128) -> float:
    """Matrix-product FLOPs of one training epoch over `n_train` digits, for the model preset's tasks.

    Backward is about twice forward, except in the first layer, whose input needs no gradient: there
    it is the weight gradient alone (autograd and our hand-written step both skip the rest).
    Element-wise work (activations, BatchNorm, pooling, losses, Adam) is not counted."""
    model = build_model(model_name, TrainConfig.preset(model_name).tasks)
    return _step_flops(model, batch_size) * n_train / batch_size


def bf16_flops_per_epoch(training: Training, flops: float) -> float:
    """The part of an epoch's `flops` that runs in bf16: none in fp32; in the MLPs' hand-written step
    only the first layer (its forward and weight gradient: 2 products x 2 FLOPs per weight per digit);
    on autograd, autocast runs every product in bf16."""
    if training.precision != "bf16":
        return 0.0
    if training.path == "fast":
        return 4.0 * training.step.hand.w1.numel() * training.data.n_train
    return flops


@contextlib.contextmanager
def num_threads(n: int):
    """torch's intra-op thread count set to `n` inside the block, put back after."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _gemm_gflops(m: int, k: int, n: int, dtype: torch.dtype, seconds: float) -> float:
    """Best rate of (m, k) @ (k, n) over chunks of about 10 ms for `seconds`: the best chunk, not the
    mean, since the machine is shared and a busy neighbour only ever slows a chunk down. The right
    operand is a transposed (n, k) tensor, as the layers hold their weights."""
    a = torch.randn(m, k).to(dtype)
    b = torch.randn(n, k).to(dtype).t()
    out = torch.empty(m, n, dtype=dtype)
    torch.mm(a, b, out=out)  # warm-up: the first call picks and prepares the kernel
    t0 = time.perf_counter()
    torch.mm(a, b, out=out)
    reps = max(1, int(0.01 / max(time.perf_counter() - t0, 1e-6)))
    best, end = 0.0, time.perf_counter() + seconds
    while best == 0.0 or time.perf_counter() < end:
        t0 = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b, out=out)
        best = max(best, reps * 2 * m * k * n / (time.perf_counter() - t0))
    return best / 1e9


def peak_gflops(threads: int, dtype: torch.dtype = torch.float32, seconds_per_shape: float = 0.1) -> float:
    """The GEMM probe: the best sustained GFLOP/s of torch.mm over `PROBE_SHAPES` with `threads` threads."""
    with num_threads(threads):
        return max(_gemm_gflops(m, k, n, dtype, seconds_per_shape) for m, k, n in PROBE_SHAPES)


def probe_peaks(thread_counts: list[int]) -> dict[int, dict[str, float | None]]:
    """{threads: {"fp32": GFLOP/s, "bf16": GFLOP/s or None where bf16 is not native}}."""
    bf16 = bf16_is_native(torch.device("cpu"))
    return {
        n: {"fp32": peak_gflops(n), "bf16": peak_gflops(n, torch.bfloat16) if bf16 else None} for n in thread_counts
    }


def floor_seconds(flops: float, bf16_flops: float, peak: dict[str, float | None]) -> float:
    """Seconds the epoch's products would take at the probe's peak: the bf16 part at the bf16 peak
    (the fp32 one where bf16 is not native: emulated bf16 is no faster), the rest at the fp32 peak."""
    bf16_peak = peak["bf16"] or peak["fp32"]
    return ((flops - bf16_flops) / peak["fp32"] + bf16_flops / bf16_peak) / 1e9


# ----------------------------------------------------------------------------- the verdict


def _mark(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def verdict(best: dict[str, tuple[str, float]], table_seconds: float | None) -> list[str]:
    """One line per goal of issue 10, from measured numbers only: `best` maps a model to (its fastest
    variant, its speed-up over the seed-faithful pipeline); `table_seconds` is the seed table's total
    (None: not run)."""
    lines = []
    for m in SEED_MODELS:
        if m in best:
            variant, ratio = best[m]
            lines.append(f"{m} {variant}: {ratio:.1f}x (goal >= {MLP_GOAL:g}x) {_mark(ratio >= MLP_GOAL)}")
        else:
            lines.append(f"{m}: not measured")
    if table_seconds is None:
        lines.append("seed table: not run (--no-table)")
    else:
        ok = table_seconds <= TABLE_GOAL_S
        lines.append(f"seed table: {table_seconds:.1f} s (goal <= {TABLE_GOAL_S:g} s) {_mark(ok)}")
    if "cnn" in best:
        variant, ratio = best["cnn"]
        lines.append(
            f"cnn {variant}: {ratio:.1f}x (goal >= {CNN_GOAL:g}x) {_mark(ratio >= CNN_GOAL)} - speed only; the "
            f"accuracy goal (digit >= {ACCURACY_GOAL * 100:.1f} % after 10 epochs, over seeds) takes full runs: "
            "bench --accuracy SEEDS"
        )
    else:
        lines.append("cnn: not measured (--no-cnn)")
    return lines


# ----------------------------------------------------------------------------- the report


@dataclass
class Row:
    """One model variant of the speed table."""

    model: str
    variant: str
    overrides: dict
    seed_s: float
    ours_s: float
    flops: float
    bf16_flops: float

    @property
    def speedup(self) -> float:
        return self.seed_s / self.ours_s


def _variants(model_name: str) -> list[tuple[str, dict]]:
    if model_name != "cnn":
        # fp32 beside "auto" (bf16 first layer where native): the seed pipeline is fp32.
        return [("fp32", {"precision": "fp32"}), ("auto", {})]
    return [
        ("fp32", {"precision": "fp32", "channels_last": False}),
        ("fp32+channels_last", {"precision": "fp32", "channels_last": True}),
        ("bf16+channels_last", {"precision": "bf16", "channels_last": True}),
    ]


def _speed_table(models: list[str], data: MTLData, limit: int | None, peak: dict, repeats: int = 3) -> list[Row]:
    """Each model's seed-faithful epoch and ours, measured in turn `repeats` times; each keeps its best
    (fastest) time. The machine's noise only ever slows a measurement down, and it comes and goes over
    minutes: alternating the two and taking each one's best compares them at the same quiet moments."""
    print(
        f"{'model':<24}{'seed s/epoch':>13}{'ours s/epoch':>13}{'speed-up':>10}"
        f"{'GFLOP/epoch':>13}{'floor s':>9}{'x floor':>9}"
    )
    rows = []
    for m in models:
        flops = flops_per_epoch(m, data.n_train)
        seed_s, ours = math.inf, {}
        for _ in range(repeats):
            seconds, timed = seed_faithful_seconds(m, data, limit)
            seed_s = min(seed_s, seconds)
            for variant, over in _variants(m):
                seconds, training = ours_seconds(m, data, **over)
                if variant not in ours or seconds < ours[variant][0]:
                    ours[variant] = (seconds, training)
        note = "" if limit is None else f", seed-faithful from {timed} batches"
        for variant, over in _variants(m):
            seconds, training = ours[variant]
            row = Row(m, variant, over, seed_s, seconds, flops, bf16_flops_per_epoch(training, flops))
            floor = floor_seconds(row.flops, row.bf16_flops, peak)
            kernel = f" ({training.kernel})" if training.kernel else ""
            print(
                f"{m + ' ' + variant:<24}{seed_s:>13.2f}{seconds:>13.3f}{row.speedup:>9.1f}x{flops / 1e9:>13.1f}"
                f"{floor:>9.3f}{seconds / floor:>8.1f}x  avg acc after 1 epoch "
                f"{training.history[-1]['avg_acc'] * 100:.2f}% ({training.precision}, {training.path} path{kernel}"
                f"{note})",
                flush=True,
            )
            rows.append(row)
    print(
        f"  floor: the counted matrix-product FLOPs over the GEMM probe's peak at {torch.get_num_threads()} threads;\n"
        "  bf16 products (the MLPs' first layer under auto, all of a bf16 CNN) at the bf16 peak, the rest at fp32's.\n"
        "  Element-wise work (activations, BatchNorm, pooling, losses, Adam) and memory traffic are not in it,\n"
        f"  so no run reaches 1.0x. Each time is the best of {repeats} alternating measurements. Ours is training\n"
        "  alone, as `train` runs it; the dashboard's runs also probe gradient conflict 4 times an epoch\n"
        "  (benchmarks/conflict_cost.py times that), the seed pipeline never."
    )
    return rows


def _threads(n: int) -> str:
    return f"{n} thread" + ("s" if n > 1 else "")


def _thread_compare(best: list[Row], data: MTLData, peaks: dict) -> None:
    """Ours with one and two threads: which pays depends on the model and on what else runs. The C++ loop
    also picks between them per chunk of batches, as a run alone does (`fastpath.ThreadPicker`)."""
    print("one vs two threads (ours, each model's fastest variant, one epoch each; x floor at that thread count):")
    for row in best:
        seconds, cells = {}, []
        for n in (1, 2):
            with num_threads(n):
                seconds[n], training = ours_seconds(row.model, data, pick_threads=False, **row.overrides)
            floor = floor_seconds(row.flops, row.bf16_flops, peaks[n])
            cells.append(f"{_threads(n):<9} {seconds[n]:6.3f} s ({seconds[n] / floor:4.1f}x floor)")
        pick = min(seconds, key=seconds.get)
        gain = max(seconds.values()) / seconds[pick]
        cells.append(f"faster: {_threads(pick)} ({gain:.2f}x)")
        if training.kernel == "C++":
            with num_threads(2):
                picked, training = ours_seconds(row.model, data, **row.overrides)
            ran = training.history[-1]["thread_batches"]
            split = ", ".join(f"{v} on {_threads(int(k))}" for k, v in ran.items())
            cells.append(f"picked per chunk {picked:6.3f} s (batches: {split})")
        print(f"  {row.model + ' ' + row.variant:<24}" + "   ".join(cells))


def _seed_table(data: MTLData) -> float:
    total = 0.0
    for m in SEED_MODELS:
        training = Training(TrainConfig.preset(m, epochs=20), data)
        for _ in training.records():
            pass
        total += training.train_seconds
        print(
            f"seed table: {m} 20 epochs {training.train_seconds:.1f} s (incl. per-epoch test and conflict probes), "
            f"best avg {training.summary()['best_avg'] * 100:.2f}% ({training.precision}, {training.path} path)",
            flush=True,
        )
    print(f"seed table total: {total:.1f} s of training for STL pair + hard + cross-stitch")
    return total


def pool_seed_table(source: str, epochs: int = 20, workers: int | None = None) -> tuple[float, list[dict]]:
    """The seed table as the dashboard trains it: three jobs queued at once on a pool of one-thread
    workers (one per core), so the models run side by side instead of one after another. Wall time from
    the submit to the last run's end (the workers are started and ready before), and the finished runs."""
    import tempfile
    from pathlib import Path

    from mtl_core.jobs.runner import JobRunner, RunnerSettings
    from mtl_core.store.runs import RunStore

    workers = workers or os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as home:
        store = RunStore(Path(home) / "runs.db")
        runner = JobRunner(store, RunnerSettings(workers=workers, threads=1, max_threads=workers))
        try:
            runner.wait_ready()
            configs = [TrainConfig.preset(m, epochs=epochs, data=source) for m in SEED_MODELS]
            t0 = time.perf_counter()
            ids = runner.submit_many(configs, owner="bench", labels=[f"seed table {m}" for m in SEED_MODELS])
            while any(store.get_run(i)["status"] in ("queued", "running") for i in ids):
                time.sleep(0.05)
            return time.perf_counter() - t0, [store.get_run(i) for i in ids]
        finally:
            runner.shutdown()


ACCURACY_PIPELINES = (("seed-faithful", None), ("ours fp32", "fp32"), ("ours auto", "auto"))


def accuracy_check(
    data: MTLData,
    seeds: int,
    model_name: str = "cnn",
    epochs: int | None = None,
    first_seed: int = 0,
    pipelines: tuple[str, ...] | None = None,
) -> dict:
    """Item 3's other half: does our fast CNN keep the tutorial's accuracy? The seed-faithful pipeline
    and ours (fp32, and auto: bf16 where native) trained by the full recipe over `seeds` seeds; per
    pipeline and seed, the digit accuracy after the last epoch ("final") and at the best epoch (picked on
    the test set as the references pick it, "best"), and the best epoch's average accuracy ("avg").
    Seeds `first_seed` onwards; `pipelines`: names from ACCURACY_PIPELINES (None: all, seed-faithful
    always among them). Returns {pipeline: {"final": [...], "best": [...], "avg": [...]}}."""
    chosen = [(n, p) for n, p in ACCURACY_PIPELINES if pipelines is None or n in pipelines or p is None]
    results = {name: {"final": [], "best": [], "avg": []} for name, _ in chosen}
    for seed in range(first_seed, first_seed + seeds):
        for name, precision in chosen:
            if precision is None:
                run = seed_faithful_run(model_name, data, seed, epochs)
                best, last = run["best"], run["last"]
            else:
                over = {"epochs": epochs} if epochs else {}
                cfg = TrainConfig.preset(model_name, seed=seed, precision=precision, **over)
                training = Training(cfg, data, conflict_probes=0)
                for _ in training.records():
                    pass
                last, best = training.history[-1], training.best_record
            r = results[name]
            r["final"].append(last["metrics"]["digit"]["acc"])
            r["best"].append(best["metrics"]["digit"]["acc"])
            r["avg"].append(best["avg_acc"])
            print(
                f"  seed {seed} {name:<14} digit after epoch {last['epoch']}: {r['final'][-1] * 100:.2f}%, at the best "
                f"epoch ({best['epoch']}): {r['best'][-1] * 100:.2f}%, best avg {r['avg'][-1] * 100:.2f}%",
                flush=True,
            )
    return results


def _pm(std: float | None) -> str:
    return "" if std is None else f" ± {std * 100:.2f}"


def accuracy_lines(results: dict) -> list[str]:
    """Mean ± std per pipeline, then the verdict on the digit goal (after the last epoch) for ours, next
    to what the seed-faithful pipeline itself reaches on the same seeds."""
    lines = []
    for name, r in results.items():
        cells = []
        for key, what in (("final", "digit after the last epoch"), ("best", "at the best epoch"), ("avg", "best avg")):
            mean, std = mean_std(r[key])
            cells.append(f"{what} {mean * 100:.2f}{_pm(std)}%")
        lines.append(f"{name:<14} " + ", ".join(cells) + f" ({len(r['final'])} seeds)")
    seed = results["seed-faithful"]
    for name in (n for n in results if n != "seed-faithful"):
        r = results[name]
        mean = mean_std(r["final"])[0]
        lines.append(
            f"{name}: digit {mean * 100:.2f}% after the last epoch (goal >= {ACCURACY_GOAL * 100:.1f}%) "
            f"{_mark(mean >= ACCURACY_GOAL)}; against the seed-faithful pipeline on the same seeds (difference "
            f"± two standard errors): after the last epoch {_difference(r['final'], seed['final'])}, at the "
            f"best epoch {_difference(r['best'], seed['best'])}, best avg {_difference(r['avg'], seed['avg'])}"
        )
    return lines


def _difference(ours: list[float], seed: list[float]) -> str:
    """Our mean minus the seed-faithful one in pp, ± two standard errors of that difference (Welch) where
    both have two runs or more, and whether it lies within them: inside, the runs' own spread explains it."""
    (m_ours, s_ours), (m_seed, s_seed) = mean_std(ours), mean_std(seed)
    diff = (m_ours - m_seed) * 100
    if s_ours is None or s_seed is None:
        return f"{diff:+.2f} pp"
    two_se = 2 * math.sqrt(s_ours**2 / len(ours) + s_seed**2 / len(seed)) * 100
    return f"{diff:+.2f} ± {two_se:.2f} pp ({'within' if abs(diff) <= two_se else 'beyond'})"


def _peaks_line(peaks: dict) -> str:
    def cell(n: int, p: dict) -> str:
        bf16 = f"{p['bf16']:.0f}" if p["bf16"] else "bf16 not native"
        return f"{_threads(n)} {p['fp32']:.0f} / {bf16}"

    return "GEMM probe peak, GFLOP/s fp32 / bf16: " + ", ".join(cell(n, p) for n, p in peaks.items())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python benchmarks/speed.py", description=__doc__)
    ap.add_argument("--data", default="auto")
    ap.add_argument("--seed-batches", type=int, default=150, help="seed-faithful batches timed per model")
    ap.add_argument("--full", action="store_true", help="time whole seed-faithful epochs")
    ap.add_argument(
        "--repeats", type=int, default=3, help="alternating measurements of each pipeline; each keeps its best"
    )
    ap.add_argument("--no-table", action="store_true", help="skip the 20-epoch seed table")
    ap.add_argument("--no-cnn", action="store_true")
    ap.add_argument(
        "--threads-compare",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="time ours with one and two threads (two more epochs per model)",
    )
    ap.add_argument(
        "--pool-table",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time the seed table as the dashboard trains it (three jobs on the worker pool at once)",
    )
    ap.add_argument(
        "--accuracy",
        type=int,
        metavar="SEEDS",
        default=0,
        help="instead of the speed benchmark, check the CNN's accuracy goal: the seed-faithful pipeline and "
        "ours (fp32 and auto), the full 10-epoch recipe over SEEDS seeds (about 6 minutes per seed here)",
    )
    ap.add_argument("--first-seed", type=int, default=0, help="with --accuracy: the seeds start here")
    ap.add_argument(
        "--pipelines",
        nargs="+",
        choices=[name.split()[-1] for name, p in ACCURACY_PIPELINES if p],
        help="with --accuracy: only these of ours (fp32, auto) beside the seed-faithful pipeline",
    )
    a = ap.parse_args(argv)
    data = load_data(a.data)
    if a.accuracy:
        print(f"data: {data.describe()}; torch {torch.__version__}, {torch.get_num_threads()} threads")
        print(
            f"CNN accuracy, the tutorial recipe ({TrainConfig.preset('cnn').epochs} epochs), {a.accuracy} seeds; "
            "the best epoch picked on the test set, as the references pick it:"
        )
        pipelines = None if a.pipelines is None else tuple(f"ours {p}" for p in a.pipelines)
        results = accuracy_check(data, a.accuracy, first_seed=a.first_seed, pipelines=pipelines)
        for line in accuracy_lines(results):
            print("  " + line)
        return 0
    limit = None if a.full else a.seed_batches
    threads = torch.get_num_threads()
    peaks = probe_peaks(sorted({1, 2, threads}))
    print(f"data: {data.describe()}; torch {torch.__version__}, {threads} threads")
    print(_peaks_line(peaks))
    models = [*SEED_MODELS] + ([] if a.no_cnn else ["cnn"])
    rows = _speed_table(models, data, limit, peaks[threads], a.repeats)
    best = {m: max((r for r in rows if r.model == m), key=lambda r: r.speedup) for m in models}
    if a.threads_compare:
        _thread_compare(list(best.values()), data, peaks)
    table = None if a.no_table else _seed_table(data)
    if table is not None and a.pool_table:
        wall, runs = pool_seed_table(a.data)  # the workers have "auto" loaded already
        accs = " / ".join(f"{r['best_avg'] * 100:.2f}%" for r in runs if r["best_avg"] is not None)
        print(
            f"seed table on the dashboard's pool ({os.cpu_count()} one-thread workers, the three runs side by "
            f"side): {wall:.1f} s wall, best avg {accs}",
            flush=True,
        )
    for m in ["stl", "hard", "cross_stitch", "cnn"]:
        print(f"single-image prediction {m:<13} {prediction_ms(m):.2f} ms (median of 200)")
    how = "whole seed-faithful epochs" if a.full else f"seed-faithful epochs from {a.seed_batches} batches"
    print(f"verdict (issue 10's goals; each model's fastest variant; {how}; {data.source}):")
    if data.source != "mnist":
        print("  not full MNIST: the numbers are not comparable with the goals")
    for line in verdict({m: (r.variant, r.speedup) for m, r in best.items()}, table):
        print("  " + line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
