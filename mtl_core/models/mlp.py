"""The MLP family (784-64-32 columns): STL, cross-stitch, hard sharing and MMoE. The columns are kept
stacked in one tensor per layer, so one `addmm`/`bmm` runs them all."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from mtl_core.models.base import (
    IN_FEATURES,
    MLP_HIDDEN,
    MultiTaskModel,
    SharedTrunkModel,
    finish_output,
    head_dim,
    init_linear_,
)
from mtl_core.models.cross_stitch import CrossStitchMixin, alpha_matrix


def _add_stacked_mlps(module: nn.Module, n: int) -> None:
    """Give `module` n independent 784-64-32 MLPs as stacked tensors w1, b1, w2, b2 (one per layer),
    each MLP initialised as nn.Linear would be."""
    h1, h2 = MLP_HIDDEN
    module.w1 = nn.Parameter(torch.empty(n, h1, IN_FEATURES))
    module.b1 = nn.Parameter(torch.empty(n, h1))
    module.w2 = nn.Parameter(torch.empty(n, h2, h1))
    module.b2 = nn.Parameter(torch.empty(n, h2))
    for i in range(n):
        init_linear_(module.w1.data[i], module.b1.data[i])
        init_linear_(module.w2.data[i], module.b2.data[i])


def _run_stacked_mlps(
    module: nn.Module, x: torch.Tensor, mix: Callable[[int, torch.Tensor], torch.Tensor] | None = None
) -> torch.Tensor:
    """All n stacked MLPs on a flat batch (B, 784) -> (n, B, 32); `mix(unit, h)` runs after each hidden ReLU."""
    n, h1 = module.w1.shape[:2]
    # All first layers in one matmul: (B, 784) @ (784, n*64).
    a = torch.addmm(module.b1.reshape(-1), x, module.w1.reshape(n * h1, IN_FEATURES).t())
    a = F.relu(a).reshape(-1, n, h1).transpose(0, 1)  # (n, B, 64)
    if mix is not None:
        a = mix(0, a)
    a = F.relu(torch.baddbmm(module.b2.unsqueeze(1), a, module.w2.transpose(1, 2)))  # (n, B, 32)
    return a if mix is None else mix(1, a)


class _StackedColumns(MultiTaskModel):
    """T independent 784-64-32 MLP columns stored as stacked tensors, one head per task."""

    def __init__(self, tasks: tuple[str, ...]):
        super().__init__(tasks)
        _add_stacked_mlps(self, len(self.tasks))
        self.heads = nn.ModuleDict({name: nn.Linear(MLP_HIDDEN[1], head_dim(name, "mlp")) for name in self.tasks})

    def _mix(self, unit: int, h: torch.Tensor) -> torch.Tensor:
        return h

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        a = _run_stacked_mlps(self, x.reshape(x.shape[0], -1), self._mix)
        return {name: finish_output(name, self.heads[name](a[i])) for i, name in enumerate(self.tasks)}


class STLMLP(_StackedColumns):
    """Single-task learning: one independent MLP per task (52,353 parameters each for a binary task).

    The columns share no parameter and each loss only reaches its own column, so one Adam over the
    stacked tensors takes exactly the steps separate per-task Adams would (Adam is elementwise)."""


class CrossStitchMLP(CrossStitchMixin, _StackedColumns):
    """Two (or T) columns mixed after each hidden ReLU by a learned T x T matrix (Misra et al., 2016):
    h_i <- sum_j alpha[i, j] h_j. Row i is what task i's column reads: alpha[i, i] is the same-task
    weight, alpha[i, j != i] the other-task weights."""

    def __init__(self, tasks: tuple[str, ...], alpha_init: str = "identity"):
        super().__init__(tasks)
        init = alpha_matrix(alpha_init, len(self.tasks))
        self.alpha = nn.ParameterList([nn.Parameter(init.clone()) for _ in MLP_HIDDEN])

    def _mix(self, unit: int, h: torch.Tensor) -> torch.Tensor:
        t, b, width = h.shape
        return (self.alpha[unit] @ h.reshape(t, b * width)).reshape(t, b, width)

    def shared_parameters(self) -> list[nn.Parameter]:
        # The mixing makes every column feed every task from the first unit on; only the heads are a task's own.
        return [self.w1, self.b1, self.w2, self.b2, *self.alpha]


class HardSharingMLP(SharedTrunkModel):
    """One shared 784-64-32 trunk, one small head per task (52,386 parameters for two binary tasks)."""

    def __init__(self, tasks: tuple[str, ...]):
        super().__init__(tasks)
        h1, h2 = MLP_HIDDEN
        self.trunk = nn.Sequential(nn.Flatten(), nn.Linear(IN_FEATURES, h1), nn.ReLU(), nn.Linear(h1, h2), nn.ReLU())
        self.heads = nn.ModuleDict({name: nn.Linear(h2, head_dim(name, "mlp")) for name in self.tasks})


MMOE_EXPERTS = 2  # two 784-64-32 experts: about the parameters of STL or cross-stitch on two tasks


class MMoEMLP(MultiTaskModel):
    """Multi-gate Mixture-of-Experts (Ma et al., KDD 2018) as a soft-sharing MLP: E shared 784-64-32
    experts; each task has its own softmax gate over the experts (a linear 784 -> E layer, reading the
    image) and its own head on the gated mixture of the experts' outputs. Tasks that need different
    things can lean on different experts; related ones can share them."""

    def __init__(self, tasks: tuple[str, ...], n_experts: int = MMOE_EXPERTS):
        super().__init__(tasks)
        _add_stacked_mlps(self, n_experts)  # the experts
        self.gates = nn.ModuleDict({name: nn.Linear(IN_FEATURES, n_experts) for name in self.tasks})
        self.heads = nn.ModuleDict({name: nn.Linear(MLP_HIDDEN[1], head_dim(name, "mlp")) for name in self.tasks})

    def gate_weights(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each task's weights over the experts for a batch: {task: (B, E)}, rows summing to 1."""
        x = x.reshape(x.shape[0], -1)
        return {name: torch.softmax(self.gates[name](x), dim=-1) for name in self.tasks}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = x.reshape(x.shape[0], -1)
        h = _run_stacked_mlps(self, x)  # every expert's output: (E, B, 32)
        out = {}
        for name, g in self.gate_weights(x).items():
            mixed = torch.einsum("be,ebk->bk", g, h)
            out[name] = finish_output(name, self.heads[name](mixed))
        return out

    def shared_parameters(self) -> list[nn.Parameter]:
        return [self.w1, self.b1, self.w2, self.b2]  # the gates and heads are each task's own
