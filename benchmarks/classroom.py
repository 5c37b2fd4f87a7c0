"""A class of 30 pressing Start at once: `python benchmarks/classroom.py [--runs 30] [--json FILE]`.

Submits distinct hard-sharing runs (own seed and learning rate, 20 epochs, full MNIST when
$MTL_DATA_DIR holds it, else the embedded subset) through the real job runner, one owner each, and
reports the wall time until all have finished, runs per minute and the queue wait (p50/p95).
Side by side, in the same run: the one-worker serial path this project had before (one worker
with torch's default threads), timed on a sample of the same runs and scaled to all of them; the
output says so. Runs and models go to a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from mtl_core.config import TrainConfig  # noqa: E402
from mtl_core.data import load_data  # noqa: E402
from mtl_core.jobs import JobRunner, RunnerSettings  # noqa: E402
from mtl_core.runs import Limits, RunStore  # noqa: E402

LRS = (1e-3, 5e-4, 2e-3)


def class_configs(n: int, epochs: int) -> list[TrainConfig]:
    return [TrainConfig.preset("hard", epochs=epochs, seed=i, lr=LRS[i % len(LRS)]) for i in range(n)]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def run_class(configs: list[TrainConfig], settings: RunnerSettings, home: Path) -> dict:
    """Submit every config at once (one student each), wait for all; timings from the run store."""
    store = RunStore(home / "runs.sqlite")
    runner = JobRunner(store, settings=settings)
    try:
        # A classroom server's workers start with the server, long before the lesson: time warm ones.
        if not runner.wait_ready(180):
            raise SystemExit("the workers did not start")
        t0 = time.time()
        ids = [runner.submit(c, owner=f"student{i:02d}") for i, c in enumerate(configs)]
        while True:
            runs = [store.get_run(i) for i in ids]
            if all(r["status"] not in ("queued", "running") for r in runs):
                break
            time.sleep(0.25)
        wall = time.time() - t0
    finally:
        runner.shutdown()
    bad = [r for r in runs if r["status"] != "finished"]
    if bad:
        raise SystemExit(f"{len(bad)} runs did not finish: {bad[0]['status']}: {bad[0]['reason']}")
    waits = [r["started"] - r["created"] for r in runs]
    return {
        "runs": len(runs),
        "wall_s": wall,
        "queue_wait_p50_s": percentile(waits, 0.5),
        "queue_wait_p95_s": percentile(waits, 0.95),
        "per_run_train_s": statistics.mean(r["train_seconds"] for r in runs),
        "best_avg_mean": statistics.mean(r["best_avg"] for r in runs),
        "paths": sorted({r["device"] for r in runs}),
        "data": runs[0]["data_source"],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--baseline-sample", type=int, default=3, help="runs timed on the old serial path")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    data = load_data("auto")
    print(f"data: {data.describe()}; {os.cpu_count()} cores; torch {torch.__version__}", flush=True)
    configs = class_configs(a.runs, a.epochs)
    with tempfile.TemporaryDirectory() as tmp:
        now = run_class(
            configs, RunnerSettings(workers=a.workers, threads=1, limits=Limits(4, 64, 64)), Path(tmp) / "a"
        )
        print(
            f"this project: {now['runs']} runs in {now['wall_s']:.1f} s ({a.workers} workers x 1 thread); "
            f"queue wait p50 {now['queue_wait_p50_s']:.1f} s, p95 {now['queue_wait_p95_s']:.1f} s",
            flush=True,
        )
        sample = [c.replace(path="autograd") for c in configs[: a.baseline_sample]]
        # The path before: one worker with torch's default threads (all cores), autograd, one run at a time.
        old = run_class(sample, RunnerSettings(workers=1, threads=0), Path(tmp) / "b")
    baseline = old["wall_s"] / len(sample) * a.runs
    result = {
        "runs": now["runs"],
        "epochs": a.epochs,
        "data": now["data"],
        "workers": a.workers,
        "wall_s": round(now["wall_s"], 2),
        "runs_per_minute": round(60 * now["runs"] / now["wall_s"], 2),
        "queue_wait_p50_s": round(now["queue_wait_p50_s"], 2),
        "queue_wait_p95_s": round(now["queue_wait_p95_s"], 2),
        "mean_best_avg_acc": round(now["best_avg_mean"], 4),
        "mean_train_s_per_run": round(now["per_run_train_s"], 2),
        "trained_on": now["paths"],
        "baseline_wall_s": round(baseline, 2),
        "baseline_note": (
            f"one worker, serial, autograd path: {len(sample)} of the runs timed ({old['wall_s']:.1f} s), "
            f"scaled to {a.runs}"
        ),
        "speedup": round(baseline / now["wall_s"], 2),
    }
    print(
        f"old serial path: {old['wall_s']:.1f} s for {len(sample)} runs -> {baseline:.0f} s for {a.runs} (scaled)\n"
        f"speed-up {result['speedup']:.2f}x; {result['runs_per_minute']:.1f} runs per minute; "
        f"mean best average accuracy {100 * now['best_avg_mean']:.2f}%"
    )
    if a.json:
        a.json.write_text(json.dumps(result, indent=2))
        print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
