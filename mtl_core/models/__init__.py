"""The four model kinds of SPEC.md behind one interface: `forward(x) -> {task: output}`.

Outputs are raw logits for classification (shape (B, C), or (B,) for a one-logit binary head) and
a value in [0, 1] for regression (shape (B,)). The MLP family keeps its task columns stacked in one
tensor per layer (one `addmm`/`bmm` for all columns); `PlainSTL` and `PlainCrossStitch` are the
textbook per-column versions the tests check the fused ones against.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from mtl_core.tasks import get_task
from mtl_core.training.batchfold import can_fold, folded_conv_bn

MLP_HIDDEN = (64, 32)  # SPEC.md: the study's parameter counts imply [64, 32], not [256, 128]
IN_FEATURES = 28 * 28


def head_dim(task_name: str, family: str) -> int:
    """Output width of a task's head. The MLP study uses one logit per binary task (BCE); the CNN
    tutorial uses two logits (cross-entropy). Both keep their reference parameter counts."""
    task = get_task(task_name)
    if task.kind == "multiclass":
        return task.n_classes
    if task.kind == "binary":
        return 1 if family == "mlp" else 2
    return 1


def _finish(task_name: str, out: torch.Tensor) -> torch.Tensor:
    """Squeeze one-wide outputs; squash the regression output into [0, 1]."""
    if out.shape[-1] == 1:
        out = out.squeeze(-1)
    return torch.sigmoid(out) if get_task(task_name).kind == "regression" else out


class MultiTaskModel(nn.Module):
    family = "mlp"

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


def _init_linear_(weight: torch.Tensor, bias: torch.Tensor) -> None:
    """nn.Linear's default initialisation, applied to one column of a stacked weight."""
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    bound = 1 / math.sqrt(weight.shape[1])
    nn.init.uniform_(bias, -bound, bound)


def _add_stacked_mlps(module: nn.Module, n: int) -> None:
    """Give `module` n independent 784-64-32 MLPs as stacked tensors w1, b1, w2, b2 (one per layer),
    each MLP initialised as nn.Linear would be."""
    h1, h2 = MLP_HIDDEN
    module.w1 = nn.Parameter(torch.empty(n, h1, IN_FEATURES))
    module.b1 = nn.Parameter(torch.empty(n, h1))
    module.w2 = nn.Parameter(torch.empty(n, h2, h1))
    module.b2 = nn.Parameter(torch.empty(n, h2))
    for i in range(n):
        _init_linear_(module.w1.data[i], module.b1.data[i])
        _init_linear_(module.w2.data[i], module.b2.data[i])


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
        return {name: _finish(name, self.heads[name](a[i])) for i, name in enumerate(self.tasks)}


class _CrossStitch:
    """What both cross-stitch models (MLP and CNN) share: their mixing matrices `alpha`, one per unit."""

    alpha: nn.ParameterList

    def alphas(self) -> list[list[list[float]]]:
        return [a.detach().cpu().tolist() for a in self.alpha]

    def alpha_parameters(self) -> list[nn.Parameter]:
        return list(self.alpha)


class STLMLP(_StackedColumns):
    """Single-task learning: one independent MLP per task (52,353 parameters each for a binary task).

    The columns share no parameter and each loss only reaches its own column, so one Adam over the
    stacked tensors takes exactly the steps separate per-task Adams would (Adam is elementwise)."""


class CrossStitchMLP(_CrossStitch, _StackedColumns):
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


class HardSharingMLP(MultiTaskModel):
    """One shared 784-64-32 trunk, one small head per task (52,386 parameters for two binary tasks)."""

    def __init__(self, tasks: tuple[str, ...]):
        super().__init__(tasks)
        h1, h2 = MLP_HIDDEN
        self.trunk = nn.Sequential(nn.Flatten(), nn.Linear(IN_FEATURES, h1), nn.ReLU(), nn.Linear(h1, h2), nn.ReLU())
        self.heads = nn.ModuleDict({name: nn.Linear(h2, head_dim(name, "mlp")) for name in self.tasks})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        z = self.trunk(x)
        return {name: _finish(name, self.heads[name](z)) for name in self.tasks}

    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self.trunk.parameters())


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
            out[name] = _finish(name, self.heads[name](mixed))
        return out

    def shared_parameters(self) -> list[nn.Parameter]:
        return [self.w1, self.b1, self.w2, self.b2]  # the gates and heads are each task's own


PatchMoments = tuple[torch.Tensor, torch.Tensor]  # this batch's rows of mtl_core/batchfold.patch_moments


def _run_first_stage(layers: nn.Sequential, x: torch.Tensor, patch_moments: PatchMoments | None) -> torch.Tensor:
    """`layers(x)`; in training, given the batch's patch moments, the leading conv + BatchNorm run as one
    convolution with the batch statistics folded in (mtl_core/training/batchfold.py: the same result, without
    BatchNorm's passes over the largest activation)."""
    conv, bn = layers[0], layers[1]
    if patch_moments is None or not (bn.training and torch.is_grad_enabled()) or not can_fold(conv, bn):
        return layers(x)
    h = folded_conv_bn(conv, bn, x, *patch_moments)
    for layer in layers[2:]:
        h = layer(h)
    return h


def _run_cnn_heads(heads: nn.ModuleDict, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each task's head on its 128 features, in float32 even under bf16 autocast: the heads are a few
    thousand multiply-adds a digit, and casting their weights, inputs and gradients each step cost more
    than bf16 saved (about 3 % of a CNN step)."""
    with torch.autocast(next(iter(features.values())).device.type, enabled=False):
        return {name: _finish(name, heads[name](h.float())) for name, h in features.items()}


def _cnn_head(name: str) -> nn.Sequential:
    """The tutorial's small MLP head on the 128-d features: 64 hidden units for the digit, 32 otherwise."""
    hidden = 64 if get_task(name).kind == "multiclass" else 32
    return nn.Sequential(nn.Linear(128, hidden), nn.ReLU(), nn.Dropout(0.3), nn.Linear(hidden, head_dim(name, "cnn")))


class _KeepLayoutFlatten(torch.autograd.Function):
    """Flatten a channels_last batch whose gradient goes back channels_last: as plain `flatten`, the
    gradient would come back in NCHW order, and max-pooling's backward would then copy its whole input
    (128 x 64 x 14 x 14) into that order and back, each step."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.shape = x.shape
        return x.flatten(1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.reshape(ctx.shape).contiguous(memory_format=torch.channels_last)


class _Flatten(nn.Flatten):
    """`nn.Flatten` (same features, same order) that keeps a channels_last gradient channels_last."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad and x.dim() == 4:
            if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
                return _KeepLayoutFlatten.apply(x)
        return super().forward(x)


class _NativeMaxPool(torch.autograd.Function):
    """2x2 max-pooling by the C++ kernel (mtl_core/native/native_pool.cpp): torch's values and gradient bit for
    bit, with a byte per output for which position won instead of an int64 index, and a backward that
    writes each input position once instead of zero-filling the gradient and scattering into it."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, kernels) -> torch.Tensor:
        out, arg = kernels.max_pool2x2(x)
        ctx.save_for_backward(arg)
        ctx.kernels, ctx.size = kernels, x.shape[2:]
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable  # its backward is not itself differentiable
    def backward(ctx, grad: torch.Tensor):
        (arg,) = ctx.saved_tensors
        return ctx.kernels.max_pool2x2_backward(grad, arg, *ctx.size), None


def _native_pool_fits(x: torch.Tensor) -> bool:
    """What the C++ max-pool takes: a channels_last float32/bf16 CPU batch, channels a multiple of 16, even
    height and width; never while tracing (an export records torch's own pooling)."""
    return (
        not torch.jit.is_tracing()
        and x.device.type == "cpu"
        and x.dim() == 4
        and x.dtype in (torch.float32, torch.bfloat16)
        and x.shape[1] % 16 == 0
        and x.shape[2] % 2 == 0
        and x.shape[3] % 2 == 0
        and x.is_contiguous(memory_format=torch.channels_last)
    )


class _MaxPool2x2(nn.MaxPool2d):
    """`nn.MaxPool2d(2)`. Where `use_native_pooling` switched it on, a batch the C++ kernel takes is pooled
    by it instead: the same values and gradients, about 1.7 ms less a 11 ms CNN step on this project's machine."""

    def __init__(self):
        super().__init__(2)
        self.native = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.native and _native_pool_fits(x):
            from mtl_core import native  # built and loaded already: use_native_pooling switched it on

            kernels = native.get()
            if torch.is_grad_enabled() and x.requires_grad:
                return _NativeMaxPool.apply(x, kernels)
            return kernels.max_pool2x2(x)[0]
        return super().forward(x)


def use_native_pooling(model: nn.Module) -> bool:
    """Switch every CNN max-pool of `model` to the C++ kernel where it is built and pays: on AVX-512 CPUs, or
    wherever `MTL_NATIVE_ISA=portable` forces its portable twin (slower than torch's pooling on its own; the
    tests run it); False (and nothing changed) elsewhere."""
    pools = [m for m in model.modules() if isinstance(m, _MaxPool2x2)]
    if not pools:
        return False
    from mtl_core import native

    kernels = native.get()
    if kernels is None or not kernels.pool_supported():
        return False
    for pool in pools:
        pool.native = True
    return True


def _cnn_stages() -> nn.ModuleList:
    """The tutorial CNN's trunk as the three stages a cross-stitch unit can follow: conv block 1, conv
    block 2, and the 3136 -> 128 fully connected layer (the same layers as MultiTaskCNN.trunk).

    Each conv block pools before its ReLU: max-pooling and ReLU commute exactly (both keep the largest
    value), forward and backward, and the ReLU then works on a quarter of the values."""
    return nn.ModuleList(
        [
            nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), _MaxPool2x2(), nn.ReLU()),
            nn.Sequential(nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), _MaxPool2x2(), nn.ReLU()),
            nn.Sequential(_Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Dropout(0.5)),
        ]
    )


class _ColumnsCNN(MultiTaskModel):
    """One full tutorial CNN per task (a column: both conv blocks and the FC layer), each with its head."""

    family = "cnn"
    mixing = False

    def __init__(self, tasks: tuple[str, ...], alpha_init: str = "identity"):
        super().__init__(tasks)
        self.columns = nn.ModuleList([_cnn_stages() for _ in self.tasks])
        self.heads = nn.ModuleDict({name: _cnn_head(name) for name in self.tasks})
        if self.mixing:
            init = alpha_matrix(alpha_init, len(self.tasks))
            self.alpha = nn.ParameterList([nn.Parameter(init.clone()) for _ in range(3)])

    def first_conv(self) -> nn.Conv2d:
        return self.columns[0][0][0]

    def forward(self, x: torch.Tensor, patch_moments: PatchMoments | None = None) -> dict[str, torch.Tensor]:
        hs = [x] * len(self.tasks)
        for stage in range(3):
            if stage == 0:
                hs = [_run_first_stage(column[0], h, patch_moments) for column, h in zip(self.columns, hs)]
            else:
                hs = [column[stage](h) for column, h in zip(self.columns, hs)]
            if self.mixing:  # h_i <- sum_j alpha[i, j] h_j, after each stage
                stacked = torch.stack(hs)
                hs = list(torch.einsum("ij,j...->i...", self.alpha[stage].to(stacked.dtype), stacked).unbind(0))
        return _run_cnn_heads(self.heads, dict(zip(self.tasks, hs)))


class STLCNN(_ColumnsCNN):
    """The CNN baseline: one independent tutorial CNN per task; nothing shared."""


class CrossStitchCNN(_CrossStitch, _ColumnsCNN):
    """Cross-stitch (Misra et al. 2016) on the tutorial CNN: one column per task, mixed by a learned
    T x T matrix after each conv block and after the FC layer."""

    mixing = True

    def shared_parameters(self) -> list[nn.Parameter]:
        # Mixed after the first block, every column feeds every task; only the heads are a task's own.
        return [p for column in self.columns for p in column.parameters()] + list(self.alpha)


class MultiTaskCNN(MultiTaskModel):
    """The 4-task CNN tutorial: conv-BN-ReLU-pool x2, 3136 -> 128 shared, a small MLP head per task."""

    family = "cnn"

    def __init__(self, tasks: tuple[str, ...]):
        super().__init__(tasks)
        # The stages flattened into one Sequential: the layer indices (trunk.0 .. trunk.11) saved models use.
        self.trunk = nn.Sequential(*(layer for stage in _cnn_stages() for layer in stage))

        self.heads = nn.ModuleDict({name: _cnn_head(name) for name in self.tasks})

    def first_conv(self) -> nn.Conv2d:
        return self.trunk[0]

    def forward(self, x: torch.Tensor, patch_moments: PatchMoments | None = None) -> dict[str, torch.Tensor]:
        z = _run_first_stage(self.trunk, x, patch_moments)
        return _run_cnn_heads(self.heads, {name: z for name in self.tasks})

    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self.trunk.parameters())


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
    raise ValueError(f"no stages known for model family {family!r}")


def head_sizes(task: str, family: str) -> str:
    """A task's head as pictures name it: its layer widths, features to outputs."""
    if family == "mlp":
        return f"{MLP_HIDDEN[1]}→{head_dim(task, family)}"
    if family == "cnn":
        hidden = 64 if get_task(task).kind == "multiclass" else 32
        return f"128→{hidden}→{head_dim(task, family)}"
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


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------- plain references


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
            out[t] = _finish(t, col.head(F.relu(col.fc2(F.relu(col.fc1(x))))))
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
        return {t: _finish(t, c.head(h)) for t, c, h in zip(self.tasks, cols, hs)}

    @classmethod
    def from_fused(cls, fused: CrossStitchMLP) -> PlainCrossStitch:
        plain = super().from_fused(fused)
        with torch.no_grad():
            for mine, theirs in zip(plain.alpha, fused.alpha):
                mine.copy_(theirs)
        return plain
