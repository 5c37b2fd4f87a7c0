"""Methods that only scale the task losses: static weights, uncertainty (Kendall et al. 2018) and DWA
(Liu et al. 2019)."""

from __future__ import annotations

import math

import torch
from torch import nn

from mtl_core.weighting.base import LossWeighting


class StaticWeighting(LossWeighting):
    """Equal or manual weights, fixed for the whole run (the config's loss weights; 1 when not given)."""

    title = "Static (equal or manual weights)"


class UncertaintyWeighting(LossWeighting):
    """Homoscedastic uncertainty weighting (Kendall, Gal and Cipolla, CVPR 2018): one learned
    s_t = log sigma_t^2 per task, total = sum_t 0.5 * (w_t * exp(-s_t) * L_t + s_t). The config's static
    weights still scale each task; s_t starts at 0, so the first step equals static weighting x 0.5.

    Each s_t belongs to its task by name, whatever order the losses come in. A task with static
    weight 0 is left out: with nothing to balance, its 0.5 * s_t alone would fall without bound."""

    title = "Uncertainty (Kendall et al. 2018)"

    def __init__(self, weights: dict[str, float]):
        super().__init__(weights)
        self.log_vars = nn.ParameterDict({t: nn.Parameter(torch.zeros(())) for t, w in self.fixed.items() if w > 0})

    def weights_now(self):
        return {t: 0.5 * self.fixed[t] * torch.exp(-s) for t, s in self.log_vars.items()}

    def extra(self):
        return sum(0.5 * s for s in self.log_vars.values()) if len(self.log_vars) else 0.0

    def current(self) -> dict[str, float]:
        """The effective weight of each task's loss now (0 for a task left out)."""
        return {
            t: 0.5 * w * math.exp(-float(self.log_vars[t].detach())) if t in self.log_vars else 0.0
            for t, w in self.fixed.items()
        }


class DWA(LossWeighting):
    """Dynamic Weight Average (Liu, Johns and Davison, CVPR 2019), T = 2: a task whose loss fell slowly
    over the last epoch weighs more in the next, w_t = K exp(r_t / T) / sum_j exp(r_j / T) with
    r_t = L_t(e-1) / L_t(e-2); weights 1 for the first two epochs."""

    title = "Dynamic Weight Average (Liu et al. 2019)"
    temperature = 2.0

    def __init__(self, weights: dict[str, float]):
        super().__init__(weights)
        self._history: list[dict[str, float]] = []
        self._dynamic = {t: 1.0 for t in self.fixed}

    def end_epoch(self, mean_losses: dict[str, float]) -> None:
        self._history = [*self._history[-1:], dict(mean_losses)]
        if len(self._history) == 2:
            before, last = self._history
            ratios = {t: last[t] / max(before[t], 1e-12) for t in self.fixed}
            z = sum(math.exp(r / self.temperature) for r in ratios.values())
            self._dynamic = {t: len(ratios) * math.exp(r / self.temperature) / z for t, r in ratios.items()}

    def weights_now(self):
        return {t: self.fixed[t] * self._dynamic[t] for t in self.fixed}

    def current(self) -> dict[str, float]:
        return {t: float(w) for t, w in self.weights_now().items()}
