"""What the cross-stitch alphas say, in sentences for the Cross-stitch page, and where they started."""

from __future__ import annotations

import math

import numpy as np

from mtl_core.models import alpha_matrix

Alphas = list[list[list[float]]]  # one T x T matrix per cross-stitch unit

STILL = 0.02  # alphas that moved less than this from their start "barely moved"
NEGATIVE = 0.05  # an alpha at or below minus this is named as negative (smaller ones are noise around 0)


def initial_alphas(alpha_init: str, n_tasks: int, n_units: int) -> Alphas:
    """Epoch 0: every unit's matrix as the run's initialisation set it (it is not random)."""
    start = alpha_matrix(alpha_init, n_tasks).tolist()
    return [start for _ in range(n_units)]


def colour_limit(history: list[Alphas]) -> float:
    """One colour scale for every epoch of a run: ±(the largest |α| of any unit and epoch, rounded up to a
    tidy step), so a growing alpha looks like growth instead of every frame rescaling to its own range."""
    top = max(float(np.abs(np.array(h, dtype=float)).max()) for h in history)
    step = 0.5 if top <= 2 else 1.0 if top <= 10 else 5.0
    return max(1.0, math.ceil(top / step - 1e-9) * step)


def _negatives(a: np.ndarray, tasks: list[str]) -> list[str]:
    """Every clearly negative alpha of one unit, largest first, as 'α[into←from] = −1.37'."""
    found = [(a[i, j], i, j) for i in range(a.shape[0]) for j in range(a.shape[1]) if a[i, j] <= -NEGATIVE]
    return [f"α[{tasks[i]}←{tasks[j]}] = {v:.2f}".replace("-", "−") for v, i, j in sorted(found)]


def alpha_reading(history: list[Alphas], alpha_lr_mult: float, tasks: list[str] | None = None) -> list[str]:
    """Sentences about the last epoch of `history` (epoch 0, the initialisation, first): per unit, how much
    each column keeps of its own features against how much it takes in from the others, and which alphas
    are negative (that column subtracts the other task's features); whether the alphas moved at all; what
    values outside 0..1 mean. At epoch 0 nothing has been learned, so it says only that."""
    start, end = np.array(history[0], dtype=float), np.array(history[-1], dtype=float)
    n_tasks = end.shape[1]
    tasks = tasks or [f"task {i + 1}" for i in range(n_tasks)]
    if len(history) == 1:
        return ["Epoch 0 is the initialisation: nothing has been learned yet. Move the slider to a later epoch."]
    eye = np.eye(n_tasks, dtype=bool)
    lines = []
    for u, a in enumerate(end, start=1):
        same, other = a[eye].mean(), np.abs(a[~eye]).mean() if n_tasks > 1 else 0.0
        if other < 0.1 * max(abs(same), 1e-9):
            verdict = "keep almost only their own features: little sharing here"
        elif other < 0.5 * abs(same):
            verdict = "mostly keep their own features and take in some of the other tasks'"
        else:
            verdict = "weigh the other tasks' features about as much as their own: strong sharing here"
        line = f"Unit {u}: same-task α ≈ {same:.2f}, other-task |α| ≈ {other:.2f}; the columns {verdict}."
        negative = _negatives(a, tasks)
        if negative:
            line += (
                f" Negative: {', '.join(negative)}: that column subtracts the other task's features (it uses "
                "them with the opposite sign), which is still sharing, not ignoring."
            )
        lines.append(line)
    moved = float(np.abs(end - start).max())
    if moved < STILL:
        advice = (
            " With the alpha learning-rate multiplier at "
            f"{alpha_lr_mult:g} they learn as slowly as ordinary weights; the paper used 100 to 1000 (and the "
            "convex-0.9 start). Try that on the Train page."
            if alpha_lr_mult < 100
            else ""
        )
        lines.append(f"The alphas barely moved from where they started (at most {moved:.3f}).{advice}")
    if (end < 0).any() or (end > 1).any():
        lines.append(
            "Alphas are free weights, not shares of 100 %: above 1 a column amplifies what it reads, below 0 "
            "it subtracts it."
        )
    return lines
