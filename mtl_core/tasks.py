"""The task table of SPEC.md, declared once: how each task's label comes from the digit."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Task:
    name: str
    kind: str  # "multiclass", "binary" or "regression"
    title: str
    label: Callable[[torch.Tensor], torch.Tensor]
    classes: tuple[str, ...] = ()  # display names of the classes (classification only)

    @property
    def is_classification(self) -> bool:
        return self.kind != "regression"

    @property
    def n_classes(self) -> int:
        return len(self.classes)


def _digit(d: torch.Tensor) -> torch.Tensor:
    return d.long()


def _even(d: torch.Tensor) -> torch.Tensor:
    return (d % 2 == 0).long()


def _mult3(d: torch.Tensor) -> torch.Tensor:
    # 0 is a multiple of 3 arithmetically, but the reference study's label is d in {3, 6, 9}.
    return ((d % 3 == 0) & (d != 0)).long()


def _gt4(d: torch.Tensor) -> torch.Tensor:
    return (d > 4).long()


def _value(d: torch.Tensor) -> torch.Tensor:
    return d.float() / 9.0


TASKS: dict[str, Task] = {
    "digit": Task("digit", "multiclass", "Which digit (0-9)", _digit, tuple(str(i) for i in range(10))),
    "even": Task("even", "binary", "Is it even?", _even, ("odd", "even")),
    "mult3": Task("mult3", "binary", "Is it 3, 6 or 9?", _mult3, ("not 3/6/9", "3/6/9")),
    "gt4": Task("gt4", "binary", "Is it greater than 4?", _gt4, ("≤ 4", "> 4")),
    "value": Task("value", "regression", "Digit value d/9 (regression)", _value),
}

# Units for showing the regression task in digits rather than in [0, 1].
VALUE_SCALE = 9.0


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}") from None


def make_targets(digits: torch.Tensor, tasks: tuple[str, ...] | list[str]) -> dict[str, torch.Tensor]:
    """Label every task from one tensor of digits."""
    return {name: get_task(name).label(digits) for name in tasks}
