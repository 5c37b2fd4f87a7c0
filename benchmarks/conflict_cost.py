"""What the gradient-conflict probe costs: `python benchmarks/conflict_cost.py [--epochs 3] [--rounds 3]`.

Trains each model on the same data with the probe off and on (Training's `conflict_probes`, 4 per
epoch by default: one forward and one backward per task on one batch each), interleaved in one process
and one thread, and prints the training-loop seconds of each and their ratio (best of `--rounds`).
The issue's goal: at most 10 % more. Full MNIST when $MTL_DATA_DIR holds it, else the embedded subset.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from mtl_core.config import TrainConfig  # noqa: E402
from mtl_core.data import load_data  # noqa: E402
from mtl_core.training.loop import CONFLICT_PROBES, Training  # noqa: E402


def train_seconds(config: TrainConfig, data, probes: int) -> float:
    records = list(Training(config, data, conflict_probes=probes).records())
    return sum(r["train_only_seconds"] for r in records)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cnn-batches", type=int, default=100, help="batches per CNN epoch (a full one takes minutes)")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)  # as a classroom worker trains
    data = load_data("auto")
    print(f"data: {data.describe()}; 1 thread; {CONFLICT_PROBES} probes per epoch", flush=True)
    worst = 0.0
    for model in ("hard", "cross_stitch", "cnn"):
        extra = {"max_batches": a.cnn_batches, "epochs": 1} if model == "cnn" else {"epochs": a.epochs}
        config = TrainConfig.preset(model, **extra)
        off, on = [], []
        for _ in range(a.rounds):  # interleaved: the machine's noise hits both alike
            off.append(train_seconds(config, data, 0))
            on.append(train_seconds(config, data, CONFLICT_PROBES))
        ratio = min(on) / min(off)
        worst = max(worst, ratio)
        print(f"{model:12s} probe off {min(off):7.3f} s   on {min(on):7.3f} s   ratio {ratio:.3f}", flush=True)
    verdict = "meets" if worst <= 1.10 else "misses"
    print(
        f"verdict: the probe {verdict} the goal of at most 10 % more training time (worst {100 * (worst - 1):+.1f} %)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
