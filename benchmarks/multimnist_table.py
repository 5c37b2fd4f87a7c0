"""Sener & Koltun's MultiMNIST table (mtl_core/reference.py) trained here, every row over seeds:
`python benchmarks/multimnist_table.py [--seeds 3] [--epochs 100] [--jobs 2] [--json F]`.

Each (row, seed) is one run of the row's model and loss weighting on the paper's recipe
(TrainConfig.preset: SGD with momentum, batch 256, the learning rate x0.85 every 10 epochs) with
`--val-split` training images held out to pick the best epoch; its test accuracy is scored once, at
that epoch. Prints each run as it ends, then the table: ours as mean ± std over seeds beside the
published figures, and the wall time of the whole table. Full MNIST when $MTL_DATA_DIR holds it,
else the embedded subset (then the figures are not comparable to the paper's).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mtl_core.paper_table import PATIENCE  # noqa: E402
from mtl_core.reference import MULTIMNIST_STUDY  # noqa: E402

_DATA = None


def _one(job: tuple[str, str, str, int, dict]) -> dict:
    import torch

    from mtl_core.config import TrainConfig
    from mtl_core.data import load_data
    from mtl_core.training.loop import Training

    global _DATA
    row, model, weighting, seed, over = job
    torch.set_num_threads(over.pop("threads"))
    if _DATA is None:
        _DATA = load_data("multimnist")
    config = TrainConfig.preset(model, loss_weighting=weighting, seed=seed, **over)
    t0 = time.perf_counter()
    training = Training(config, _DATA, conflict_probes=0)
    for _ in training.records():
        pass
    test = training.test_result[0] if training.test_result else training.best_record["metrics"]
    out = {
        "row": row,
        "seed": seed,
        "status": training.status,
        "best_epoch": training.best_epoch,
        "epochs_run": len(training.history),
        # the validation score (mean accuracy) of every epoch: what a patience would have stopped on
        "val_curve": [round(r["avg_acc"], 5) for r in training.history],
        "left": test["left"]["acc"] * 100,
        "right": test["right"]["acc"] * 100,
        "seconds": time.perf_counter() - t0,
        "device": str(training.device),
        "data": _DATA.describe(detail=False),
    }
    print(
        f"{row:30s} seed {seed}: left {out['left']:.2f} right {out['right']:.2f} "
        f"(epoch {out['best_epoch']} of {out['epochs_run']}, {out['seconds']:.0f} s, {out['device']})",
        flush=True,
    )
    return out


def mean_std(values: list[float]) -> str:
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}" if len(values) > 1 else f"{values[0]:.2f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--val-split", type=int, default=6000)
    ap.add_argument("--patience", type=int, default=PATIENCE, help="0: every epoch, as the paper")
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time (each in its own process)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--lr", type=float, default=None, help="another learning rate than the recipe's")
    ap.add_argument("--rows", nargs="*", default=None, help="row names' first words (default: every row)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--jsonl", default=None, help="also append each run here as it ends (kept if the table is cut)")
    a = ap.parse_args(argv)
    over = {
        "epochs": a.epochs, "val_split": a.val_split, "patience": a.patience, "device": a.device, "threads": a.threads
    }  # fmt: skip
    if a.lr:
        over["lr"] = a.lr
    rows = [r for r in MULTIMNIST_STUDY["rows"] if not a.rows or any(r[0].startswith(w) for w in a.rows)]
    jobs = [(name, model, weighting, seed, dict(over)) for name, model, weighting, _ in rows for seed in range(a.seeds)]
    t0 = time.perf_counter()
    results = []
    with mp.get_context("spawn").Pool(a.jobs) as pool:
        for out in pool.imap_unordered(_one, jobs, chunksize=1):
            results.append(out)
            if a.jsonl:
                with open(a.jsonl, "a") as f:
                    f.write(json.dumps(out) + "\n")
    wall = time.perf_counter() - t0
    print(f"\n{results[0]['data']}; {a.epochs} epochs, {a.seeds} seeds, {a.jobs} at a time: {wall / 60:.1f} min")
    print(f"{'row':30s} {'ours left':>15s} {'ours right':>15s}   published (left / right)")
    for name, _, _, published in rows:
        mine = [r for r in results if r["row"] == name]
        pub = "; ".join(f"{k}: {a:.2f} / {b:.2f}" for k, (a, b) in published.items())
        left, right = mean_std([r["left"] for r in mine]), mean_std([r["right"] for r in mine])
        print(f"{name:30s} {left:>15s} {right:>15s}   {pub}")
    if a.json:
        Path(a.json).write_text(json.dumps({"wall_s": wall, "args": vars(a), "runs": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
