"""A class of 30 pressing Start at once: `python benchmarks/classroom.py [--runs 30] [--json FILE]`.

Submits distinct hard-sharing runs (own seed and learning rate, 20 epochs, full MNIST when
$MTL_DATA_DIR holds it, else the embedded subset) through the real job runner, one owner each, and
reports the wall time until all have finished, runs per minute and the queue wait (p50/p95).
The runs use the presets' precision ("auto": on a CPU with native bf16 the hard-sharing step runs
its first layer in bf16); where that picked bf16, the same class is timed again in fp32.
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
from stats import percentile  # noqa: E402 - benchmarks/stats.py, beside this script

from mtl_core.config import TrainConfig  # noqa: E402
from mtl_core.data import load_data  # noqa: E402
from mtl_core.jobs.runner import JobRunner, RunnerSettings  # noqa: E402
from mtl_core.store.runs import Limits, RunStore  # noqa: E402

LRS = (1e-3, 5e-4, 2e-3)


def class_configs(n: int, epochs: int) -> list[TrainConfig]:
    return [TrainConfig.preset("hard", epochs=epochs, seed=i, lr=LRS[i % len(LRS)]) for i in range(n)]


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
        # One cheap query per half second: this process shares the two cores with the workers.
        while store.count_active():
            time.sleep(0.5)
        runs = [store.get_run(i) for i in ids]
        wall = max(r["finished"] for r in runs) - t0  # the store's own end times, not the poll's
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
    ap.add_argument("--skip-fp32", action="store_true", help="do not also time the class with every run in fp32")
    a = ap.parse_args(argv)
    data = load_data("auto")
    print(f"data: {data.describe()}; {os.cpu_count()} cores; torch {torch.__version__}", flush=True)
    configs = class_configs(a.runs, a.epochs)
    settings = RunnerSettings(workers=a.workers, threads=1, limits=Limits(4, 64, 64))
    with tempfile.TemporaryDirectory() as tmp:
        now = run_class(configs, settings, Path(tmp) / "a")
        print(
            f"this project (the presets' precision 'auto': {', '.join(now['paths'])}): {now['runs']} runs in "
            f"{now['wall_s']:.1f} s ({a.workers} workers x 1 thread); queue wait p50 "
            f"{now['queue_wait_p50_s']:.1f} s, p95 {now['queue_wait_p95_s']:.1f} s",
            flush=True,
        )
        fp32 = None
        if not a.skip_fp32 and any("bf16" in p for p in now["paths"]):
            # The same class with every run in fp32, for the record: bf16 is what auto picks here.
            fp32 = run_class([c.replace(precision="fp32") for c in configs], settings, Path(tmp) / "c")
            print(f"the same class in fp32: {fp32['wall_s']:.1f} s", flush=True)
        sample = [c.replace(path="autograd", precision="fp32") for c in configs[: a.baseline_sample]]
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
        "fp32_wall_s": None if fp32 is None else round(fp32["wall_s"], 2),
        "fp32_mean_best_avg_acc": None if fp32 is None else round(fp32["best_avg_mean"], 4),
        "baseline_wall_s": round(baseline, 2),
        "baseline_note": (
            f"one worker, serial, autograd path, fp32: {len(sample)} of the runs timed ({old['wall_s']:.1f} s), "
            f"scaled to {a.runs}"
        ),
        "speedup": round(baseline / now["wall_s"], 2),
    }
    print(
        f"old serial path: {old['wall_s']:.1f} s for {len(sample)} runs -> {baseline:.0f} s for {a.runs} (scaled)\n"
        f"speed-up {result['speedup']:.2f}x; {result['runs_per_minute']:.1f} runs per minute; "
        f"mean best average accuracy {100 * now['best_avg_mean']:.2f}%"
        + ("" if fp32 is None else f" (fp32: {100 * fp32['best_avg_mean']:.2f}%)")
    )
    if a.json:
        a.json.write_text(json.dumps(result, indent=2))
        print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
