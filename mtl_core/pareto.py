"""The Pareto front of two tasks: a sweep of static loss weights from (1, 0) to (0, 1), plus any loss
weighting methods, each a run; the points (task A's test accuracy against task B's), which of them no other
point beats on both tasks, and the hypervolume they dominate (pymoo's indicator)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mtl_core.config import ConfigError, TrainConfig

LABEL = "front"  # a sweep's runs are labelled "front <sweep>: <point>", so a page can find them again


def sweep_weights(k: int) -> list[tuple[float, float]]:
    """`k` weight pairs evenly from (1, 0) to (0, 1)."""
    if not isinstance(k, int) or k < 2:
        raise ConfigError(f"a sweep needs at least 2 points (got {k!r})")
    return [(round(1 - i / (k - 1), 4), round(i / (k - 1), 4)) for i in range(k)]


def sweep_configs(
    base: TrainConfig, tasks: tuple[str, str], k: int, methods: tuple[str, ...] = (), sweep: str = ""
) -> list[tuple[str, TrainConfig]]:
    """(label, config) of every point of a sweep on `base` (its model, data and recipe): `k` static weight
    pairs on the two tasks, then one run per method with its own weighting."""
    a, b = tasks
    if a == b:
        raise ConfigError("a front needs two different tasks")
    base = base.replace(tasks=(a, b), loss_weights={}, loss_weighting="static")
    name = f"{LABEL} {sweep}".strip()
    points = [
        (f"{name}: {a} ×{wa:g}, {b} ×{wb:g}", base.replace(loss_weights={a: wa, b: wb})) for wa, wb in sweep_weights(k)
    ]
    points += [(f"{name}: {m}", base.replace(loss_weighting=m)) for m in methods if m != "static"]
    return points


def dominated(points: list[tuple[float, float]]) -> list[bool]:
    """For each point (higher is better on both), whether another point is at least as good on both and
    better on one."""
    out = []
    for i, (x, y) in enumerate(points):
        out.append(any(j != i and u >= x and v >= y and (u > x or v > y) for j, (u, v) in enumerate(points)))
    return out


def hypervolume(points: list[tuple[float, float]], reference: tuple[float, float] = (0.0, 0.0)) -> float:
    """The area the points dominate above `reference` (accuracies as fractions: at most 1)."""
    from pymoo.indicators.hv import HV

    if not points:
        return 0.0
    # pymoo minimises: accuracies become their negatives, and the reference too.
    return float(HV(ref_point=-np.asarray(reference, dtype=float))(-np.asarray(points, dtype=float)))


@dataclass(frozen=True)
class FrontPoint:
    run_id: str
    label: str
    weights: dict[str, float]  # task -> static weight; a method's point: its name under "method"
    method: str
    accuracy: dict[str, float]  # task -> test accuracy in %
    dominated: bool


def front(runs: list[dict], tasks: tuple[str, str]) -> list[FrontPoint]:
    """The finished runs that trained both tasks as points of their front, best-first order kept as given."""
    a, b = tasks
    usable = [
        r
        for r in runs
        if r["status"] == "finished" and all("acc" in ((r.get("best") or {}).get(t) or {}) for t in (a, b))
    ]
    xy = [(r["best"][a]["acc"], r["best"][b]["acc"]) for r in usable]
    flags = dominated(xy)
    points = []
    for r, (x, y), flag in zip(usable, xy, flags):
        config = r["config"]
        weights = {t: float(config.get("loss_weights", {}).get(t, 1.0)) for t in (a, b)}
        points.append(
            FrontPoint(r["id"], r.get("label", ""), weights, config.get("loss_weighting", "static"),
                       {a: 100 * x, b: 100 * y}, flag)
        )  # fmt: skip
    return points
