"""What every model here shares: the interface `forward(x) -> {task: output}`, the input and hidden
sizes, and each task's head width and output (raw logits, or a value in [0, 1] for regression)."""

from __future__ import annotations

import math

import torch
from torch import nn

from mtl_core.tasks import get_task

MLP_HIDDEN = (64, 32)  # SPEC.md: the study's parameter counts imply [64, 32], not [256, 128]
IN_FEATURES = 28 * 28


def head_dim(task_name: str, family: str) -> int:
    """Output width of a task's head. The MLP study uses one logit per binary task (BCE); the CNN
    tutorial (and the LeNet family after it) uses two logits (cross-entropy). Both keep their reference
    parameter counts."""
    task = get_task(task_name)
    if task.kind == "multiclass":
        return task.n_classes
    if task.kind == "binary":
        return 1 if family == "mlp" else 2
    return 1


def finish_output(task_name: str, out: torch.Tensor) -> torch.Tensor:
    """Squeeze one-wide outputs; squash the regression output into [0, 1]."""
    if out.shape[-1] == 1:
        out = out.squeeze(-1)
    return torch.sigmoid(out) if get_task(task_name).kind == "regression" else out


class MultiTaskModel(nn.Module):
    family = "mlp"
    # The shared trunk's output in the last forward pass, where the model has one trunk and keeps it (what
    # MGDA-UB balances the task gradients on); None for models without one.
    representation: torch.Tensor | None = None

    def __init__(self, tasks: tuple[str, ...]):
        super().__init__()
        if not tasks:
            raise ValueError("a model needs at least one task")
        for t in tasks:
            get_task(t)
        if len(set(tasks)) != len(tasks):
            raise ValueError(f"tasks repeat: {tasks}")
        self.tasks = tuple(tasks)

    def alphas(self) -> list[list[list[float]]] | None:
        """Cross-stitch matrices as nested lists (one T x T list per unit); None for other kinds."""
        return None

    def alpha_parameters(self) -> list[nn.Parameter]:
        return []

    def shared_parameters(self) -> list[nn.Parameter]:
        """The parameters more than one task's loss reaches (what gradient-based weighting balances)."""
        return []


class SharedTrunkModel(MultiTaskModel):
    """Hard sharing: `self.trunk` every task reads, `self.heads[task]` each task's own. The forward pass keeps
    the trunk's output as `representation` (what MGDA-UB balances the task gradients on)."""

    trunk: nn.Module
    heads: nn.ModuleDict

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        z = self.trunk(x)
        self.representation = z
        return {name: finish_output(name, self.heads[name](z)) for name in self.tasks}

    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self.trunk.parameters())


def init_linear_(weight: torch.Tensor, bias: torch.Tensor) -> None:
    """nn.Linear's default initialisation, applied to one column of a stacked weight."""
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    bound = 1 / math.sqrt(weight.shape[1])
    nn.init.uniform_(bias, -bound, bound)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
