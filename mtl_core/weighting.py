"""Loss weighting: how per-task losses become the one loss that is minimised. Separate from the
sharing scheme (the model), as in LibMTL's weighting/ vs architecture/ split."""

from __future__ import annotations

import math

import torch
from torch import nn


class StaticWeighting(nn.Module):
    """Fixed weights from the config (the tutorial's 1 / 1 / 1 / 10)."""

    def __init__(self, weights: dict[str, float]):
        super().__init__()
        self.fixed = dict(weights)

    def forward(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(self.fixed[t] * loss for t, loss in losses.items())

    def current(self) -> dict[str, float]:
        return dict(self.fixed)


class UncertaintyWeighting(nn.Module):
    """Homoscedastic uncertainty weighting (Kendall, Gal and Cipolla, CVPR 2018): one learned
    s_t = log sigma_t^2 per task, total = sum_t 0.5 * (w_t * exp(-s_t) * L_t + s_t). The config's static
    weights still scale each task; s_t starts at 0, so the first step equals static weighting x 0.5.

    Each s_t belongs to its task by name, whatever order the losses come in. A task with static
    weight 0 is left out: with nothing to balance, its 0.5 * s_t alone would fall without bound."""

    def __init__(self, weights: dict[str, float]):
        super().__init__()
        self.fixed = dict(weights)
        self.log_vars = nn.ParameterDict({t: nn.Parameter(torch.zeros(())) for t, w in self.fixed.items() if w > 0})

    def forward(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        total = 0.0
        for t, loss in losses.items():
            if t in self.log_vars:
                s = self.log_vars[t]
                total = total + 0.5 * (self.fixed[t] * torch.exp(-s) * loss + s)
        return total

    def current(self) -> dict[str, float]:
        """The effective weight of each task's loss now (0 for a task left out)."""
        return {
            t: 0.5 * w * math.exp(-float(self.log_vars[t].detach())) if t in self.log_vars else 0.0
            for t, w in self.fixed.items()
        }


WEIGHTINGS: dict[str, type[nn.Module]] = {"static": StaticWeighting, "uncertainty": UncertaintyWeighting}


def build_weighting(name: str, weights: dict[str, float]) -> nn.Module:
    try:
        return WEIGHTINGS[name](weights)
    except KeyError:
        raise ValueError(f"unknown loss weighting {name!r}; valid: {', '.join(WEIGHTINGS)}") from None
