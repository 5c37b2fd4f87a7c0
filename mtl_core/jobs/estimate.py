"""How long a run will take on this server, and how long a queued run will wait, from what this
server has measured (the median epoch of recent runs of the same model, data and batch size).

Before any such run has finished an epoch here, a first guess is counted, and said to be a guess: the
model's floating-point operations per image (forward and backward, counted by torch's FlopCounterMode)
over the digits it trains on, times the backward passes its loss weighting makes, at the arithmetic rate
one worker thread reached on a 2-core CPU for that kind of network (benchmarks/estimates.py).
"""

from __future__ import annotations

import functools
import heapq
import math
import time
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from mtl_core.config import TrainConfig
from mtl_core.models import MODELS, build_model
from mtl_core.store.runs import RunStore
from mtl_core.weighting import WEIGHTINGS

# FLOP/s of training (forward + backward, as counted) one worker thread reaches per family, batch 128
# (256 for the LeNets), fitted to `python benchmarks/estimates.py` on this project's 2-core machine
# (BENCHMARKS.md). The MLPs' hand-written step, the CNNs' folded first block and the LeNets' bf16 make
# the rates differ more than the arithmetic does.
FLOP_RATE = {"mlp": 8.0e10, "cnn": 1.25e11, "lenet": 5.0e10}
# On the MLPs any weighting but static leaves the hand-written step for autograd (measured 3x).
AUTOGRAD_COST = {"mlp": 3.0, "cnn": 1.0, "lenet": 1.0}
# What a method's step costs beyond its arithmetic, in seconds a step on one thread of this project's
# 2-core machine, the same for every model (benchmarks/estimates.py): CAGrad solves a small problem each
# step, and torchjd's PCGrad spends about 2 ms where MGDA's and the others' weights cost next to nothing.
SOLVER_STEP_S = {"cagrad": 0.004, "pcgrad": 0.002}


@functools.lru_cache(maxsize=64)
def counted_flops(model: str, tasks: tuple[str, ...]) -> tuple[float, float]:
    """FLOPs of one image through `model` for `tasks`: (forward, forward + backward)."""
    with torch.random.fork_rng():  # the weights' random start leaves the caller's random state alone
        net = build_model(model, tasks)
    x = torch.zeros(2, 1, 28, 28)  # two images: BatchNorm trains on a batch; halved below
    with FlopCounterMode(display=False) as forward:
        net(x)
    with FlopCounterMode(display=False) as both:
        out = net(x)
        sum(o.float().sum() for o in out.values()).backward()
    return forward.get_total_flops() / 2, both.get_total_flops() / 2


def backward_passes(weighting: str, tasks: int) -> float:
    """A step's cost over a static one's, from its backward passes: a gradient method on the shared
    parameters runs one backward per task instead of one in all (a backward costs about two forwards);
    MGDA-UB's per-task backwards stop at the shared representation, which costs next to nothing here."""
    method = WEIGHTINGS.get(weighting)
    if method is None or not method.needs_shared or method.needs_representation:
        return 1.0
    return (1 + 2 * tasks) / 3


def step_cost(weighting: str, tasks: int, forward: float, train: float) -> float:
    """A training step's FLOPs over a static one's: its backward passes, and for FAMO the forward pass that
    scores the batch again after the step."""
    method = WEIGHTINGS.get(weighting)
    again = forward / train if method is not None and method.needs_losses_after_step else 0.0
    return backward_passes(weighting, tasks) + again


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
    """Seconds for one epoch of `config` (a TrainConfig dict) on `data_source` with `n_train` digits: this
    server's measured epochs where it has comparable ones, else the counted guess."""
    weighting = config.get("loss_weighting", "static")
    measured = store.epoch_seconds(
        config["model"], data_source, config["batch_size"], config.get("train_limit", 0), weighting
    )
    if measured:
        return Estimate(sorted(measured)[len(measured) // 2], True)
    return Estimate(guess_epoch_seconds(config, n_train), False)


def guess_epoch_seconds(config: dict, n_train: int) -> float:
    """The counted first guess: training FLOPs over the digits trained on, times the weighting's cost,
    plus the forward pass that scores the epoch, at the family's rate; small batches cost more per digit
    (the per-step overhead, not the arithmetic, dominates there)."""
    spec = MODELS[config["model"]]
    tasks = tuple(config.get("tasks") or spec.default_tasks)
    forward, train = counted_flops(config["model"], tasks)
    n_all = min(n_train, config.get("train_limit") or n_train)
    n = max(n_all - config.get("val_split", 0), 0)  # held out: scored, not trained on
    scored = config.get("val_split", 0) or n_train / 6  # the validation digits, else the test set (1/6 of train)
    weighting = config.get("loss_weighting", "static")
    cost = step_cost(weighting, len(tasks), forward, train)
    if weighting != "static":
        cost *= AUTOGRAD_COST[spec.family]
    fitted_batch = TrainConfig.preset(config["model"]).batch_size  # the rates were measured on the recipe's
    small = max(1.0, fitted_batch / config["batch_size"]) ** 0.8
    steps = math.ceil(n / config["batch_size"])
    arithmetic = (n * train * cost * small + scored * forward) / FLOP_RATE[spec.family]
    return arithmetic + steps * SOLVER_STEP_S.get(weighting, 0.0)


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
