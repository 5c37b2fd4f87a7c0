"""The CNN family (the tutorial's two conv blocks and 128-d features): the shared 4-task CNN, one CNN
per task, and cross-stitched CNNs; with the C++ max-pool and the folded first block they train with."""

from __future__ import annotations

import torch
from torch import nn

from mtl_core.models.base import MultiTaskModel, finish_output, head_dim
from mtl_core.models.batchfold import can_fold, folded_conv_bn
from mtl_core.models.cross_stitch import CrossStitchMixin, alpha_matrix
from mtl_core.tasks import get_task

PatchMoments = tuple[torch.Tensor, torch.Tensor]  # this batch's rows of mtl_core/models/batchfold.patch_moments


def _run_first_stage(layers: nn.Sequential, x: torch.Tensor, patch_moments: PatchMoments | None) -> torch.Tensor:
    """`layers(x)`; in training, given the batch's patch moments, the leading conv + BatchNorm run as one
    convolution with the batch statistics folded in (mtl_core/models/batchfold.py: the same result, without
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
        return {name: finish_output(name, heads[name](h.float())) for name, h in features.items()}


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


class CrossStitchCNN(CrossStitchMixin, _ColumnsCNN):
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
        self.representation = z
        return _run_cnn_heads(self.heads, {name: z for name in self.tasks})

    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self.trunk.parameters())
