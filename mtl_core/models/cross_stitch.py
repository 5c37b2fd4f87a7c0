"""Cross-stitch units (Misra et al., 2016): a learned T x T matrix per unit mixes the task columns, and
the ways to start it (ALPHA_INITS)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


class CrossStitchMixin:
    """What both cross-stitch models (MLP and CNN) share: their mixing matrices `alpha`, one per unit."""

    alpha: nn.ParameterList

    def alphas(self) -> list[list[list[float]]]:
        return [a.detach().cpu().tolist() for a in self.alpha]

    def alpha_parameters(self) -> list[nn.Parameter]:
        return list(self.alpha)


def _convex(same: float) -> Callable[[int], torch.Tensor]:
    def make(t: int) -> torch.Tensor:
        if t == 1:
            return torch.ones(1, 1)
        m = torch.full((t, t), (1.0 - same) / (t - 1))
        m.fill_diagonal_(same)
        return m

    return make


# Initialisations from the paper (convex 0.9/0.1 was slightly best) and from public code.
ALPHA_INITS: dict[str, Callable[[int], torch.Tensor]] = {
    "identity": lambda t: torch.eye(t),
    "convex-0.9": _convex(0.9),
    "convex-0.5": _convex(0.5),
    "convex-0.1": _convex(0.1),
    "ones": lambda t: torch.ones(t, t),
}


def alpha_matrix(name: str, n_tasks: int) -> torch.Tensor:
    try:
        return ALPHA_INITS[name](n_tasks).float()
    except KeyError:
        raise ValueError(f"unknown alpha initialisation {name!r}; valid: {', '.join(ALPHA_INITS)}") from None
