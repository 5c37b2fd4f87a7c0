"""The LeNet family: the network of Sener & Koltun (NeurIPS 2018, Figure 5) for MultiMNIST. A trunk of
Conv(1->10, 5x5) -> ReLU -> max-pool 2 -> Conv(10->20, 5x5) -> ReLU -> max-pool 2 -> FC 320->50 (+ ReLU),
and a 50->10 linear head per task: `LeNetMTL` shares the trunk, `STLLeNet` gives each task its own.

The paper's figure, not its public code: the code's heads are 50->50->10, and it adds dropout (on the
second conv's channels and in the heads). The figure is what the paper describes and its table reports,
its parameter counts can be checked exactly, and without dropout a run is a function of its seed alone.
"""

from __future__ import annotations

import torch
from torch import nn

from mtl_core.models.base import MultiTaskModel, SharedTrunkModel, finish_output, head_dim

FEATURES = 50  # the trunk's output: the shared representation MGDA-UB balances the gradients on


def lenet_trunk() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 10, kernel_size=5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(10, 20, kernel_size=5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(320, FEATURES),
        nn.ReLU(),
    )


def lenet_head(task: str) -> nn.Linear:
    return nn.Linear(FEATURES, head_dim(task, "lenet"))


class LeNetMTL(SharedTrunkModel):
    """Hard sharing: one LeNet trunk, a linear head per task (22,350 parameters for left and right)."""

    family = "lenet"

    def __init__(self, tasks: tuple[str, ...]):
        super().__init__(tasks)
        self.trunk = lenet_trunk()
        self.heads = nn.ModuleDict({name: lenet_head(name) for name in self.tasks})


class STLLeNet(MultiTaskModel):
    """The baseline: one whole LeNet (trunk and head) per task; nothing shared (43,680 parameters for two)."""

    family = "lenet"

    def __init__(self, tasks: tuple[str, ...]):
        super().__init__(tasks)
        self.trunks = nn.ModuleDict({name: lenet_trunk() for name in self.tasks})
        self.heads = nn.ModuleDict({name: lenet_head(name) for name in self.tasks})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: finish_output(name, self.heads[name](self.trunks[name](x))) for name in self.tasks}
