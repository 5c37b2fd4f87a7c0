"""What the cross-stitch alphas say, in sentences for the Cross-stitch page, and where they started."""

from __future__ import annotations

import numpy as np

from mtl_core.models import alpha_matrix

Alphas = list[list[list[float]]]  # one T x T matrix per cross-stitch unit

STILL = 0.02  # alphas that moved less than this from their start "barely moved"


def initial_alphas(alpha_init: str, n_tasks: int, n_units: int) -> Alphas:
    """Epoch 0: every unit's matrix as the run's initialisation set it (it is not random)."""
    start = alpha_matrix(alpha_init, n_tasks).tolist()
    return [start for _ in range(n_units)]


def alpha_reading(history: list[Alphas], alpha_lr_mult: float) -> list[str]:
    """Sentences about the last epoch of `history` (epoch 0 first): per unit, how much each column keeps
    of its own features and borrows from the others; whether the alphas moved at all; what values
    outside 0..1 mean."""
    start, end = np.array(history[0], dtype=float), np.array(history[-1], dtype=float)
    n_tasks = end.shape[1]
    eye = np.eye(n_tasks, dtype=bool)
    lines = []
    for u, a in enumerate(end, start=1):
        same, other = a[eye].mean(), np.abs(a[~eye]).mean() if n_tasks > 1 else 0.0
        if other < 0.1 * max(abs(same), 1e-9):
            verdict = "keep almost only their own features: little sharing here"
        elif other < 0.5 * abs(same):
            verdict = "mostly keep their own features and borrow some from the other tasks"
        else:
            verdict = "borrow about as much from the other tasks as they keep: strong sharing here"
        lines.append(f"Unit {u}: same-task α ≈ {same:.2f}, other-task |α| ≈ {other:.2f}; the columns {verdict}.")
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
            "it subtracts the other task's features."
        )
    return lines
