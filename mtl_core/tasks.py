"""The task table of SPEC.md, declared once: how each task's label comes from the digit.

Labels are one digit per image (MNIST), or two (MultiMNIST: the left and the right digit, one column
each). The tasks read off one digit (even, mult3, ...) read the left one of a pair; `left` and `right`
need pairs."""

from __future__ import annotations

import functools
import re
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
    column: int | None = None  # reads this column of a pair of digits (MultiMNIST); None: the (left) digit

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

NOISE_SEED = 20_240_229  # fixed: `noise` shuffles the same way on every server and in every run


def _noise(d: torch.Tensor) -> torch.Tensor:
    """The labels of `even`, shuffled across the images by a fixed permutation: as balanced as `even`, and
    unrelated to what each image shows, so nothing can learn it (a task that can only hurt its partners)."""
    order = torch.randperm(len(d), generator=torch.Generator().manual_seed(NOISE_SEED))
    return _even(d)[order.to(d.device)]


TASKS["noise"] = Task("noise", "binary", "Noise: the labels of even, shuffled (unlearnable)", _noise, ("0", "1"))

# MultiMNIST (mtl_core/multimnist.py): two overlapping digits, one task each.
TASKS["left"] = Task("left", "multiclass", "The left (upper) digit", _digit, TASKS["digit"].classes, column=0)
TASKS["right"] = Task("right", "multiclass", "The right (lower) digit", _digit, TASKS["digit"].classes, column=1)
PAIR_TASKS = tuple(name for name, task in TASKS.items() if task.column is not None)

# Units for showing the regression task in digits rather than in [0, 1].
VALUE_SCALE = 9.0


# A task a student designs: a name, "=", and the digits that answer yes ("loop=0689": has a loop).
OWN_TASK = re.compile(r"^([a-z][a-z0-9_]{0,15})=([0-9]{1,9})$")
OWN_TASK_HELP = "your own yes/no task: a name, =, and the digits that answer yes (for example loop=0689)"


@functools.cache
def own_task(spec: str) -> Task | None:
    """The binary task `spec` ("name=digits") describes, or None when it is not one. Its key everywhere (the
    run's config, the model's head, the records) is the whole spec, so a saved run can be rebuilt from it."""
    match = OWN_TASK.match(spec)
    if not match or spec in TASKS:
        return None
    name, digits = match.group(1), tuple(sorted({int(c) for c in match.group(2)}))
    if len(digits) != len(match.group(2)):
        return None  # a digit twice: "loop=0068" is a typo more likely than a wish
    chosen = torch.tensor(digits)

    def label(d: torch.Tensor) -> torch.Tensor:
        return torch.isin(d, chosen.to(d.device)).long()

    listed = " ".join(map(str, digits))
    return Task(spec, "binary", f"{name}: is it one of {listed}?", label, (f"not {name}", name))


def get_task(name: str) -> Task:
    task = TASKS.get(name) or own_task(name)
    if task is None:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}, or {OWN_TASK_HELP}")
    return task


def is_task(name: object) -> bool:
    return isinstance(name, str) and (name in TASKS or own_task(name) is not None)


def first_digit(labels: torch.Tensor) -> torch.Tensor:
    """The digit of each image: itself for MNIST's (N,) labels, the left one of MultiMNIST's (N, 2)."""
    return labels[:, 0] if labels.ndim == 2 else labels


def make_targets(labels: torch.Tensor, tasks: tuple[str, ...] | list[str]) -> dict[str, torch.Tensor]:
    """Label every task from the images' digits: (N,) for MNIST, (N, 2) left and right for MultiMNIST."""
    out = {}
    for name in tasks:
        task = get_task(name)
        if task.column is None:
            out[name] = task.label(first_digit(labels))
        elif labels.ndim == 2:
            out[name] = task.label(labels[:, task.column])
        else:
            raise ValueError(f"task {name!r} needs two digits per image (the MultiMNIST data)")
    return out


def label_words(label) -> str:
    """One image's digits as a caption: "7", or "7 | 2" for a MultiMNIST pair (left | right)."""
    values = torch.as_tensor(label).reshape(-1).tolist()
    return " | ".join(str(int(v)) for v in values)
