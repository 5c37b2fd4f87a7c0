"""The model kinds behind one interface, `forward(x) -> {task: output}`, and their registry (MODELS).

One file per family: `base` (the interface, sizes, heads), `mlp` (STL, hard sharing, cross-stitch, MMoE),
`cnn` (the 4-task CNN, one CNN per task, cross-stitched CNNs), `lenet` (MultiMNIST's LeNet, shared
and one per task), `cross_stitch` (the mixing units and their
starting values), `plain` (the textbook per-column MLPs the tests check the stacked ones against) and
`batchfold` (the CNNs' first block as one convolution in training). Adding a model: its class in its
family's file, one ModelSpec entry below (its `sharing` draws its picture), and its parameter count in
the tests.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mtl_core.models.base import IN_FEATURES, MLP_HIDDEN, MultiTaskModel, count_parameters, head_dim
from mtl_core.models.cnn import STLCNN, CrossStitchCNN, MultiTaskCNN, use_native_pooling
from mtl_core.models.cross_stitch import ALPHA_INITS, alpha_matrix
from mtl_core.models.lenet import FEATURES as LENET_FEATURES
from mtl_core.models.lenet import LeNetMTL, STLLeNet
from mtl_core.models.mlp import MMOE_EXPERTS, STLMLP, CrossStitchMLP, HardSharingMLP, MMoEMLP
from mtl_core.models.plain import PlainCrossStitch, PlainSTL
from mtl_core.tasks import get_task

# ----------------------------------------------------------------------------- registry


SHARING = {  # what a model shares between its tasks; the architecture pictures are drawn from this
    "nothing": "one column per task, nothing shared",
    "trunk": "one shared body, a head per task",
    "cross_stitch": "one column per task, mixed by learned alphas after each stage",
    "experts": "shared experts, mixed for each task by its own gate",
}


def body_stages(family: str) -> tuple[str, ...]:
    """The stages of one column (or of the shared trunk), input to features, as pictures name them."""
    if family == "mlp":
        h1, h2 = MLP_HIDDEN
        return (f"{IN_FEATURES}→{h1}", f"{h1}→{h2}")
    if family == "cnn":
        return ("conv block 1\\n(conv 3x3, BN, ReLU, pool)", "conv block 2", "FC 3136→128")
    if family == "lenet":
        return ("conv 5x5 →10, ReLU, pool", "conv 5x5 →20, ReLU, pool", f"FC 320→{LENET_FEATURES}")
    raise ValueError(f"no stages known for model family {family!r}")


def head_sizes(task: str, family: str) -> str:
    """A task's head as pictures name it: its layer widths, features to outputs."""
    if family == "mlp":
        return f"{MLP_HIDDEN[1]}→{head_dim(task, family)}"
    if family == "cnn":
        hidden = 64 if get_task(task).kind == "multiclass" else 32
        return f"128→{hidden}→{head_dim(task, family)}"
    if family == "lenet":
        return f"{LENET_FEATURES}→{head_dim(task, family)}"
    raise ValueError(f"no head known for model family {family!r}")


@dataclass(frozen=True)
class ModelSpec:
    name: str
    title: str
    family: str
    default_tasks: tuple[str, ...]
    builder: Callable[..., MultiTaskModel]
    description: str
    sharing: str  # a key of SHARING
    settings: tuple[str, ...] = ()  # the config fields its builder takes besides the tasks
    baseline: str = "stl"  # the single-task model of its family, which Δm is measured against

    def __post_init__(self) -> None:
        if self.sharing not in SHARING:
            raise ValueError(f"model {self.name!r}: sharing {self.sharing!r} is not one of {sorted(SHARING)}")


MODELS: dict[str, ModelSpec] = {
    "stl": ModelSpec(
        "stl",
        "STL",
        "mlp",
        ("even", "mult3"),
        STLMLP,
        "One independent 784-64-32 MLP per task; nothing is shared.",
        sharing="nothing",
    ),
    "hard": ModelSpec(
        "hard",
        "Hard sharing",
        "mlp",
        ("even", "mult3"),
        HardSharingMLP,
        "One shared 784-64-32 trunk, a linear head per task.",
        sharing="trunk",
    ),
    "cross_stitch": ModelSpec(
        "cross_stitch",
        "Cross-stitch",
        "mlp",
        ("even", "mult3"),
        CrossStitchMLP,
        "One column per task, mixed after each hidden layer by learned alphas.",
        sharing="cross_stitch",
        settings=("alpha_init",),
    ),
    "mmoe": ModelSpec(
        "mmoe",
        "MMoE",
        "mlp",
        ("even", "mult3"),
        MMoEMLP,
        f"{MMOE_EXPERTS} shared 784-64-32 experts; each task's own softmax gate mixes them for its head.",
        sharing="experts",
    ),
    "cnn": ModelSpec(
        "cnn",
        "4-task CNN",
        "cnn",
        ("digit", "even", "gt4", "value"),
        MultiTaskCNN,
        "Shared conv trunk (2 conv blocks, 128-d), a small MLP head per task.",
        sharing="trunk",
        baseline="stl_cnn",
    ),
    "stl_cnn": ModelSpec(
        "stl_cnn",
        "STL CNNs",
        "cnn",
        ("digit", "even", "gt4", "value"),
        STLCNN,
        "One full tutorial CNN per task (2 conv blocks, 128-d FC, head); nothing is shared.",
        sharing="nothing",
        baseline="stl_cnn",
    ),
    "cross_stitch_cnn": ModelSpec(
        "cross_stitch_cnn",
        "Cross-stitch CNN",
        "cnn",
        ("digit", "even", "gt4", "value"),
        CrossStitchCNN,
        "One tutorial CNN per task, mixed by learned alphas after each conv block and after the FC layer.",
        sharing="cross_stitch",
        settings=("alpha_init",),
        baseline="stl_cnn",
    ),
    "lenet": ModelSpec(
        "lenet",
        "LeNet",
        "lenet",
        ("left", "right"),
        LeNetMTL,
        "Sener & Koltun's MultiMNIST network: a shared LeNet trunk (2 conv layers, 50-d), a linear head per task.",
        sharing="trunk",
        baseline="stl_lenet",
    ),
    "stl_lenet": ModelSpec(
        "stl_lenet",
        "STL LeNets",
        "lenet",
        ("left", "right"),
        STLLeNet,
        "One whole LeNet (2 conv layers, 50-d, head) per task; nothing is shared.",
        sharing="nothing",
        baseline="stl_lenet",
    ),
}


def get_model_spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(MODELS)}") from None


def build_model(name: str, tasks: tuple[str, ...] | list[str] | None = None, **settings: Any) -> MultiTaskModel:
    """The model from its registry entry: its builder gets the tasks and the settings it declares
    (e.g. a config's alpha_init reaches cross-stitch and is ignored by the others)."""
    spec = get_model_spec(name)
    tasks = tuple(tasks) if tasks else spec.default_tasks
    return spec.builder(tasks, **{k: v for k, v in settings.items() if k in spec.settings})


@functools.cache
def shares_parameters(name: str) -> bool:
    """Whether the model kind has parameters that several tasks' losses reach (STL has none)."""
    return bool(build_model(name).shared_parameters())


__all__ = [
    "ALPHA_INITS",
    "CrossStitchCNN",
    "CrossStitchMLP",
    "HardSharingMLP",
    "IN_FEATURES",
    "LeNetMTL",
    "MLP_HIDDEN",
    "MMOE_EXPERTS",
    "MMoEMLP",
    "MODELS",
    "ModelSpec",
    "MultiTaskCNN",
    "MultiTaskModel",
    "PlainCrossStitch",
    "PlainSTL",
    "SHARING",
    "STLCNN",
    "STLLeNet",
    "STLMLP",
    "alpha_matrix",
    "body_stages",
    "build_model",
    "count_parameters",
    "get_model_spec",
    "head_dim",
    "head_sizes",
    "shares_parameters",
    "use_native_pooling",
]
