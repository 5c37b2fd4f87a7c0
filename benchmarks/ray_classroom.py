"""The classroom workload on each backend: `python benchmarks/ray_classroom.py [--runs 30] [--json FILE]`.

The same 30 hard-sharing runs as benchmarks/classroom.py (own seed and learning rate, 20 epochs, full
MNIST when $MTL_DATA_DIR holds it), submitted at once through the real job runner, timed side by side in
one process on: the local worker pool (2 workers x 1 thread), Ray with one node (a local instance with
this machine's cores), and Ray with two simulated nodes (ray.cluster_utils.Cluster: a head with no CPUs
and two worker nodes of one CPU each, all on this machine). Reported for each: wall time until all have
finished, runs per minute, queue wait p50/p95, and the overhead per job: the run's time in the store
(claimed to finished) minus its training loop's own seconds, i.e. dispatch, worker start, data, and
sending the results back. Runs and models go to a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import ray  # noqa: E402
from classroom import class_configs, run_class  # noqa: E402 - benchmarks/classroom.py, beside this script

from mtl_core.data import load_data  # noqa: E402
from mtl_core.jobs.runner import RunnerSettings  # noqa: E402
from mtl_core.store.runs import Limits, RunStore  # noqa: E402

ROOT = str(Path(__file__).resolve().parent.parent)
# Ray's workers import this project from here and find the same digits as this process.
ENV = {"env_vars": {"PYTHONPATH": ROOT, **{k: v for k, v in os.environ.items() if k == "MTL_DATA_DIR"}}}


def overhead_per_job(home: Path) -> float:
    """Mean seconds a run spent claimed but not in its training loop."""
    runs = RunStore(home / "runs.sqlite").list_runs()
    return statistics.mean((r["finished"] - r["started"]) - r["train_seconds"] for r in runs)


def measure(name: str, configs, settings: RunnerSettings, home: Path) -> dict:
    result = run_class(configs, settings, home)
    result["overhead_per_job_s"] = overhead_per_job(home)
    print(
        f"{name}: {result['runs']} runs in {result['wall_s']:.1f} s ({60 * result['runs'] / result['wall_s']:.1f} "
        f"runs/min); queue wait p50 {result['queue_wait_p50_s']:.1f} s, p95 {result['queue_wait_p95_s']:.1f} s; "
        f"overhead per job {result['overhead_per_job_s']:.2f} s; mean best avg {100 * result['best_avg_mean']:.2f}%",
        flush=True,
    )
    return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in result.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    cores = os.cpu_count() or 1
    print(f"data: {load_data('auto').describe()}; {cores} cores; ray {ray.__version__}", flush=True)
    configs = class_configs(a.runs, a.epochs)
    limits = Limits(4, 64, 64)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        local = RunnerSettings(workers=cores, threads=1, limits=limits)
        results["local pool"] = measure(f"local pool ({cores} workers x 1 thread)", configs, local, tmp / "local")

        on_ray = RunnerSettings(threads=1, limits=limits, executor="ray")
        ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False, runtime_env=ENV)
        try:
            results["ray, one node"] = measure(f"Ray, one node ({cores} CPUs)", configs, on_ray, tmp / "ray1")
        finally:
            ray.shutdown()

        from ray.cluster_utils import Cluster

        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
        for _ in range(2):
            cluster.add_node(num_cpus=max(1, cores // 2))
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False, runtime_env=ENV)
        try:
            results["ray, two simulated nodes"] = measure(
                f"Ray, two simulated nodes ({max(1, cores // 2)} CPU each, same machine)", configs, on_ray, tmp / "ray2"
            )
        finally:
            ray.shutdown()
            cluster.shutdown()
    base = results["local pool"]["wall_s"]
    for name, r in results.items():
        print(f"{name:28s} wall {r['wall_s']:7.1f} s  x{r['wall_s'] / base:5.2f} of the local pool")
    if a.json:
        a.json.write_text(json.dumps({"runs": a.runs, "epochs": a.epochs, "results": results}, indent=2))
        print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
