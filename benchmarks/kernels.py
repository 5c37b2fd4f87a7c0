"""What the own C++ code buys: `MTL_DATA_DIR=../shared/data python benchmarks/kernels.py [--rounds 7] [--threads 2]`.

The own C++ left: the MLPs' batch loop (`mtl_core/native/native_steps.cpp`: ATen's operations and torch's fused Adam,
called without Python in between; without it, `MTL_NATIVE=0`, the Python loop runs the same maths) and the
CNNs' max-pool (`mtl_core/native/native_pool.cpp`; its AVX-512 twin, its portable twin that `MTL_NATIVE_ISA=portable`
forces, or torch's pooling). The figures they move: the seed table's wall time (`python -m mtl_core compare`:
the STL pair, hard sharing and cross-stitch, each epoch's training, test evaluation and conflict probes;
on one thread, a classroom worker's) and a CNN run's epoch time. One Training per model, in one process;
the configurations alternate epoch by epoch (the order flipped every other round), so a busy spell of
this shared machine falls on all of them alike. "(again)" repeats the first configuration: its ratio
shows the noise. Printed per configuration: the median over the rounds, the ratio of medians and the
median of the per-round ratios, each against the first configuration.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from mtl_core.config import TrainConfig
from mtl_core.data import load_data
from mtl_core.models.cnn import _MaxPool2x2
from mtl_core.reference import SEED_MODELS
from mtl_core.training.loop import Training

CONFIGS = {"C++ loop": True, "C++ loop (again)": True, "MTL_NATIVE=0": False}  # name -> the C++ loop runs


def measure(rounds: int, threads: int) -> dict[str, list[float]]:
    """Seconds of one seed-table epoch (one epoch of each seed model) per configuration and round."""
    torch.set_num_threads(threads)
    data = load_data("auto")
    print(f"data: {data.describe()}; {threads} thread(s); {rounds} rounds after a warm-up one", flush=True)
    runs = []
    for m in SEED_MODELS:
        training = Training(TrainConfig.preset(m, epochs=500), data, pick_threads=False)
        if training.step.native is None:
            raise SystemExit(f"the C++ loop is not built here: {training.path_note}")
        runs.append((training, training.records(), training.step.native))
    times: dict[str, list[float]] = {name: [] for name in CONFIGS}
    for r in range(rounds + 1):
        for name in list(CONFIGS) if r % 2 == 0 else list(reversed(CONFIGS)):
            total = 0.0
            for training, epochs, loop in runs:
                training.step.native = loop if CONFIGS[name] else None  # None: the Python loop (as MTL_NATIVE=0)
                t0 = time.perf_counter()
                next(epochs)
                total += time.perf_counter() - t0
            if r:  # round 0 warms up
                times[name].append(total)
    return times


CNN_CONFIGS = {"C++ max-pool": "simd", "C++ max-pool (again)": "simd", "portable twin": "portable", "torch's": None}


def measure_cnn(rounds: int, threads: int) -> dict[str, list[float]]:
    """Seconds of one CNN epoch (training, test evaluation and probes) per configuration and round."""
    torch.set_num_threads(threads)
    training = Training(TrainConfig.preset("cnn", epochs=500), load_data("auto"))
    pools = [m for m in training.model.modules() if isinstance(m, _MaxPool2x2)]
    if not pools or not all(p.native for p in pools):
        raise SystemExit("the C++ max-pool is not built here")
    epochs = training.records()
    times: dict[str, list[float]] = {name: [] for name in CNN_CONFIGS}
    try:
        for r in range(rounds + 1):
            for name in list(CNN_CONFIGS) if r % 2 == 0 else list(reversed(CNN_CONFIGS)):
                isa = CNN_CONFIGS[name]
                for p in pools:
                    p.native = isa is not None
                os.environ["MTL_NATIVE_ISA"] = isa or "auto"
                t0 = time.perf_counter()
                next(epochs)
                if r:
                    times[name].append(time.perf_counter() - t0)
    finally:
        os.environ.pop("MTL_NATIVE_ISA", None)
    return times


def table(times: dict[str, list[float]]) -> list[str]:
    base = next(iter(times))
    ref = statistics.median(times[base])
    lines = [f"{'configuration':<22}{'s an epoch':>16}{'ratio of medians':>18}{'per-round ratio':>17}"]
    for name, seconds in times.items():
        med = statistics.median(seconds)
        per_round = statistics.median(x / y for x, y in zip(seconds, times[base]))
        lines.append(f"{name:<22}{med:>16.3f}{med / ref:>17.2f}x{per_round:>16.2f}x")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2, help="torch threads (a classroom worker's: 1)")
    ap.add_argument("--cnn-rounds", type=int, default=3, help="rounds of CNN epochs (0: none)")
    a = ap.parse_args(argv)
    print("seed table epoch (one epoch of each seed model):")
    print("\n".join(table(measure(a.rounds, a.threads))))
    if a.cnn_rounds:
        print("CNN epoch:")
        print("\n".join(table(measure_cnn(a.cnn_rounds, a.threads))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
