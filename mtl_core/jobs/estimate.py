"""How long a run will take on this server, and how long a queued run will wait, from what this
server has measured (the median epoch of recent runs of the same model, data and batch size).

Before any such run has finished an epoch here, a rough figure measured on a 2-core CPU with one
thread per worker is used, and said to be a guess.
"""

from __future__ import annotations

import heapq
import math
import time
from dataclasses import dataclass

from mtl_core.models import MODELS
from mtl_core.store.runs import RunStore
from mtl_core.weighting import WEIGHTINGS

# Seconds per epoch on full MNIST (60,000 digits, batch 128), one thread, training plus test pass, as
# `python benchmarks/estimates.py` measured them on a quiet 2-core machine (BENCHMARKS.md).
GUESS_FULL_EPOCH_S = {
    "stl": 0.3,
    "hard": 0.2,
    "cross_stitch": 0.3,
    "mmoe": 0.35,
    "cnn": 9.5,
    "stl_cnn": 40.0,  # one CNN per task
    "cross_stitch_cnn": 55.0,
    "lenet": 7.5,  # MultiMNIST, batch 256
    "stl_lenet": 14.5,
}
FULL_N_TRAIN = 60_000
# An epoch with another loss weighting than static, over the static one, from the same measurements. On
# the MLPs, learned loss weights leave the hand-written step for autograd; a gradient method adds a
# backward per task and its aggregation (CAGrad solves a small problem each step); a CNN is on autograd
# anyway, so only the gradient methods cost it more.
WEIGHTING_COST = {
    "mlp": {"uncertainty": 3.0, "dwa": 3.0, "famo": 4.5, "gradnorm": 5.0, "pcgrad": 6.5, "cagrad": 12.0},
    "cnn": {"uncertainty": 1.0, "dwa": 1.0, "famo": 1.3, "cagrad": 4.0},
    "lenet": {"uncertainty": 1.05, "dwa": 1.0, "famo": 1.5, "mgda_ub": 1.0, "pcgrad": 1.75},
}
# The other gradient methods (MGDA, IMTL-G, Aligned-MTL, UPGrad).
DEFAULT_GRADIENT_COST = {"mlp": 5.5, "cnn": 2.6, "lenet": 1.5}


@dataclass(frozen=True)
class Estimate:
    seconds: float
    measured: bool  # False: a rough guess, nothing comparable has run on this server yet

    def words(self) -> str:
        return ("about " if self.measured else "roughly ") + duration_words(self.seconds)


def duration_words(seconds: float) -> str:
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 5400:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


def epoch_estimate(store: RunStore, config: dict, data_source: str, n_train: int) -> Estimate:
    """Seconds for one epoch of `config` (a TrainConfig dict) on `data_source` with `n_train` digits."""
    weighting = config.get("loss_weighting", "static")
    measured = store.epoch_seconds(
        config["model"], data_source, config["batch_size"], config.get("train_limit", 0), weighting
    )
    if measured:
        return Estimate(sorted(measured)[len(measured) // 2], True)
    n = min(n_train, config.get("train_limit") or n_train) - config.get("val_split", 0)  # held out: not trained on
    # Small batches cost more per digit: the per-step overhead, not the arithmetic, dominates here.
    per_digit = GUESS_FULL_EPOCH_S.get(config["model"], 5.0) / FULL_N_TRAIN
    return Estimate(
        per_digit * max(n, 0) * max(1.0, 128 / config["batch_size"]) ** 0.8 * _weighting_cost(config), False
    )


def _weighting_cost(config: dict) -> float:
    weighting = config.get("loss_weighting", "static")
    if weighting == "static" or weighting not in WEIGHTINGS:
        return 1.0
    family = MODELS[config["model"]].family if config["model"] in MODELS else "mlp"
    if weighting in WEIGHTING_COST[family]:
        return WEIGHTING_COST[family][weighting]
    return (
        DEFAULT_GRADIENT_COST[family] if WEIGHTINGS[weighting].needs_shared else WEIGHTING_COST[family]["uncertainty"]
    )


def run_estimate(store: RunStore, config: dict, data_source: str, n_train: int) -> Estimate:
    one = epoch_estimate(store, config, data_source, n_train)
    return Estimate(one.seconds * config["epochs"], one.measured)


@dataclass(frozen=True)
class QueueSpot:
    position: int  # 1: next to start
    wait_s: float
    measured: bool


def queue_spot(
    store: RunStore, run: dict, workers: int, data_source: str, n_train: int, now: float | None = None
) -> QueueSpot:
    """Where a queued run stands: how many start before it and roughly when it starts, simulating
    first-come-first-served on `workers` workers (the real order is round robin across students, so a
    run of someone with nothing running yet starts sooner). A running run's remaining time counts down
    between its epochs too (time since its last epoch ended, up to 95 % of an epoch), so a page that
    asks again every few seconds shows the wait falling, not standing still until the next epoch."""
    now = time.time() if now is None else now
    active = store.list_runs(statuses=("queued", "running"))
    running = [r for r in active if r["status"] == "running"]
    ahead = sorted(
        (r for r in active if r["status"] == "queued" and (r["created"], r["id"]) < (run["created"], run["id"])),
        key=lambda r: (r["created"], r["id"]),
    )
    progress = store.epoch_progress([r["id"] for r in running])
    known: dict[tuple, Estimate] = {}  # a class queues many runs of one recipe: one query per recipe

    def per_epoch(config: dict) -> Estimate:
        key = tuple(config.get(f) for f in ("model", "batch_size", "train_limit", "loss_weighting", "val_split"))
        if key not in known:
            known[key] = epoch_estimate(store, config, data_source, n_train)
        return known[key]

    measured = True
    free_at = []
    for r in running:
        done, per = progress.get(r["id"], (0, 0.0))
        if not per:
            est = per_epoch(r["config"])
            per, measured = est.seconds, measured and est.measured
        in_epoch = now - (r.get("started") or now) - done * per  # into the epoch under way, roughly
        in_epoch = min(max(0.0, in_epoch), 0.95 * per)
        free_at.append(max(0.0, (r["config"]["epochs"] - done) * per - in_epoch))
    # A Ray cluster with no CPUs right now has 0 workers: estimate as for one (the page says why it waits).
    free_at += [0.0] * max(0, max(1, workers) - len(free_at))
    heapq.heapify(free_at)
    for r in ahead:
        est = per_epoch(r["config"])
        measured = measured and est.measured
        heapq.heappush(free_at, heapq.heappop(free_at) + est.seconds * r["config"]["epochs"])
    wait = free_at[0] if free_at else 0.0  # a heap: the earliest free worker
    return QueueSpot(position=len(ahead) + 1, wait_s=wait if math.isfinite(wait) else 0.0, measured=measured)


def parallel_seconds(seconds: list[float], workers: int) -> float:
    """Wall time for runs of these lengths queued together on `workers` free workers (longest first,
    each onto the least busy worker)."""
    lanes = [0.0] * max(1, workers)
    for s in sorted(seconds, reverse=True):
        lanes[lanes.index(min(lanes))] += s
    return max(lanes)
