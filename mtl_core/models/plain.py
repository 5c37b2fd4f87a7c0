"""The textbook per-column MLPs (one nn.Linear per layer and task), which tests check the stacked ones
against and the seed-faithful benchmark trains."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional as F

from mtl_core.models.base import IN_FEATURES, MLP_HIDDEN, finish_output, head_dim

if TYPE_CHECKING:
    from mtl_core.models.mlp import CrossStitchMLP, _StackedColumns


class _Column(nn.Module):
    def __init__(self, task: str):
        super().__init__()
        h1, h2 = MLP_HIDDEN
        self.fc1, self.fc2 = nn.Linear(IN_FEATURES, h1), nn.Linear(h1, h2)
        self.head = nn.Linear(h2, head_dim(task, "mlp"))


class PlainSTL(nn.Module):
    """Textbook STL: a dict of separate nn.Linear columns. Reference for the fused `STLMLP`."""

    def __init__(self, tasks: tuple[str, ...]):
        super().__init__()
        self.tasks = tuple(tasks)
        self.columns = nn.ModuleDict({t: _Column(t) for t in self.tasks})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = x.reshape(x.shape[0], -1)
        out = {}
        for t, col in self.columns.items():
            out[t] = finish_output(t, col.head(F.relu(col.fc2(F.relu(col.fc1(x))))))
        return out

    @classmethod
    def from_fused(cls, fused: _StackedColumns) -> PlainSTL:
        plain = cls(fused.tasks)
        with torch.no_grad():
            for i, t in enumerate(fused.tasks):
                col = plain.columns[t]
                col.fc1.weight.copy_(fused.w1[i]), col.fc1.bias.copy_(fused.b1[i])
                col.fc2.weight.copy_(fused.w2[i]), col.fc2.bias.copy_(fused.b2[i])
                col.head.load_state_dict(fused.heads[t].state_dict())
        return plain


class PlainCrossStitch(PlainSTL):
    """Textbook cross-stitch with a Python loop over columns. Reference for `CrossStitchMLP`."""

    def __init__(self, tasks: tuple[str, ...]):
        super().__init__(tasks)
        self.alpha = nn.ParameterList([nn.Parameter(torch.eye(len(self.tasks))) for _ in MLP_HIDDEN])

    def _stitch(self, unit: int, hs: list[torch.Tensor]) -> list[torch.Tensor]:
        a = self.alpha[unit]
        return [sum(a[i, j] * hs[j] for j in range(len(hs))) for i in range(len(hs))]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = x.reshape(x.shape[0], -1)
        cols = [self.columns[t] for t in self.tasks]
        hs = self._stitch(0, [F.relu(c.fc1(x)) for c in cols])
        hs = self._stitch(1, [F.relu(c.fc2(h)) for c, h in zip(cols, hs)])
        return {t: finish_output(t, c.head(h)) for t, c, h in zip(self.tasks, cols, hs)}

    @classmethod
    def from_fused(cls, fused: CrossStitchMLP) -> PlainCrossStitch:
        plain = super().from_fused(fused)
        with torch.no_grad():
            for mine, theirs in zip(plain.alpha, fused.alpha):
                mine.copy_(theirs)
        return plain
