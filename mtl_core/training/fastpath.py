"""Fast training steps for the MLPs (STL, hard sharing, cross-stitch, MMoE): the forward and backward written out by
hand, all parameters in one flat buffer, one fused optimiser call per step.

At batch 128 these models are tiny (about 0.1 ms of arithmetic per step) and autograd's per-operation
bookkeeping costs more than the maths; writing the gradients out (three matmuls forward, five back)
with no autograd graph halves the step. The model's own parameters become views of the flat buffer,
so evaluation, saving and loading see the same weights. `tests/test_fastpath.py` checks the gradients
against autograd and a few hundred steps against the autograd path.

The same steps and their batch loop also run in C++ (`native_steps.cpp`, through `NativeLoop`; built by
`native.py`): the same ATen operations and torch's fused Adam, without Python's cost per operation (a
quarter of the step at batch 128). `ThreadPicker` chooses its threads.
"""

from __future__ import annotations

import statistics

import torch
from torch.nn import functional as F

from mtl_core import native
from mtl_core.models import STLMLP, CrossStitchMLP, HardSharingMLP, MMoEMLP, MultiTaskModel
from mtl_core.tasks import get_task


class FlatParameters:
    """Re-home `params` (in this order) as views of one flat parameter with one flat gradient. Each view
    keeps its parameter's strides, so a channels_last convolution weight stays channels_last."""

    def __init__(self, params: list[torch.nn.Parameter]):
        n = sum(p.numel() for p in params)
        first = params[0]
        self.flat = torch.nn.Parameter(torch.empty(n, dtype=first.dtype, device=first.device))
        self.flat.grad = torch.zeros_like(self.flat)
        self.grads: dict[int, torch.Tensor] = {}
        self.offsets: dict[int, int] = {}  # where each parameter starts in the flat buffer
        self.params = list(params)
        offset = 0
        for p in params:
            k = p.numel()
            if not (p.is_contiguous() or p.is_contiguous(memory_format=torch.channels_last)):
                raise ValueError("a parameter with gaps in its storage cannot live in a flat buffer")
            view = self.flat.data[offset : offset + k].as_strided(p.shape, p.stride())
            view.copy_(p.data)
            p.data = view
            self.grads[id(p)] = self.flat.grad[offset : offset + k].as_strided(p.shape, p.stride())
            self.offsets[id(p)] = offset
            offset += k

    def grad_of(self, p: torch.nn.Parameter) -> torch.Tensor:
        return self.grads[id(p)]

    def span(self, first: torch.nn.Parameter, numel: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`numel` values of the flat parameter and of its gradient from where `first` starts: parameters
        placed next to each other, viewed as one."""
        start = self.offsets[id(first)]
        return self.flat.data[start : start + numel], self.flat.grad[start : start + numel]

    def bind_grads(self) -> None:
        """Make each parameter's `.grad` its view of the flat gradient: autograd then adds every
        backward's gradients into it in place (it accumulates into a `.grad` that exists), and one
        optimiser call updates all parameters. The gradient must be zeroed in place between steps
        (`FlatAdam.zero_grad`), never set to None."""
        for p in self.params:
            p.grad = self.grads[id(p)]


class FlatAdam(torch.optim.Optimizer):
    """torch's fused Adam (or AdamW) kernel called directly on the one flat parameter: the update of
    `torch.optim.Adam(fused=True)` without its per-step Python bookkeeping (about half of its 40 us
    here). A StepLR scheduler works on it as on any optimiser."""

    def __init__(
        self,
        flat: torch.nn.Parameter,
        lr: float,
        weight_decay: float = 0.0,
        decoupled: bool = False,
        tail: int = 0,
        tail_lr_mult: float = 1.0,
    ):
        """`tail`: the last elements (the cross-stitch alphas) learn at `tail_lr_mult` times the rate,
        as their own parameter group would (a scheduler scales both)."""
        super().__init__([flat], dict(lr=lr, weight_decay=weight_decay, betas=(0.9, 0.999), eps=1e-8))
        self.tail, self.tail_lr_mult = tail, tail_lr_mult
        state = self.state[flat]
        state["step"] = torch.zeros((), dtype=torch.float32, device=flat.device)
        state["exp_avg"] = torch.zeros_like(flat.data)
        state["exp_avg_sq"] = torch.zeros_like(flat.data)
        self.decoupled = decoupled
        self._kernel = torch._fused_adamw_ if decoupled else torch._fused_adam_

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ARG002 - the Optimizer signature
        self.update()

    def zero_grad(self, set_to_none: bool = True) -> None:  # noqa: ARG002 - the Optimizer signature
        """Zero the flat gradient in place: the parameters' `.grad` views (`bind_grads`) stay bound."""
        self.param_groups[0]["params"][0].grad.zero_()

    def parts(self) -> list[tuple[slice, float, float]]:
        """(part of the flat buffer, learning rate, weight decay) for each kernel call of one update."""
        group = self.param_groups[0]
        # One kernel call where the tail would get the same update anyway (no decay, the same rate).
        if self.tail and (group["weight_decay"] != 0.0 or self.tail_lr_mult != 1.0):
            # The alphas are mixing weights, not network weights: no decay pulls them toward 0.
            k = group["params"][0].numel() - self.tail
            return [
                (slice(0, k), group["lr"], group["weight_decay"]),
                (slice(k, None), group["lr"] * self.tail_lr_mult, 0.0),
            ]
        return [(slice(None), group["lr"], group["weight_decay"])]

    def update(self) -> None:
        """The update itself, for the training loop to call directly: `step` goes through the
        Optimizer wrapper's profiling and hook bookkeeping, about a tenth of the step's cost here."""
        group = self.param_groups[0]
        p = group["params"][0]
        state = self.state[p]
        state["step"].add_(1)
        beta1, beta2 = group["betas"]
        for part, lr, decay in self.parts():
            self._kernel(
                [p.data[part]],
                [p.grad[part]],
                [state["exp_avg"][part]],
                [state["exp_avg_sq"][part]],
                [],
                [state["step"]],
                amsgrad=False,
                lr=lr,
                beta1=beta1,
                beta2=beta2,
                weight_decay=decay,
                eps=group["eps"],
                maximize=False,
            )
        self._opt_called = True  # what the wrapper would record; LR schedulers check it


# The model kinds of native_steps.cpp.
NATIVE_HARD, NATIVE_STL, NATIVE_CROSS_STITCH, NATIVE_MMOE = 0, 1, 2, 3
NATIVE_HEAD_KINDS = {"binary": 0, "multiclass": 1, "regression": 2}  # native_steps.cpp's HeadKind


class _HeadsStep:
    """What the hand-written steps share: the task heads' slices of the logits, the loss weights, the
    targets in the form a batch is sliced from, and the losses with their gradient d(sum_t w_t L_t)/dz.
    When every task is binary (the study's pairs), the losses and gradients come for all tasks at once."""

    def _init_heads(self, model: MultiTaskModel, heads: list, weights: dict[str, float], bf16: bool) -> None:
        flat = self.params.flat.data
        self.tasks = tuple(model.tasks)
        self.slices: list[tuple[str, int, int, str, float]] = []
        lo = 0
        for t, h in zip(model.tasks, heads):
            kind = get_task(t).kind
            self.slices.append((t, lo, lo + h.out_features, kind, float(weights.get(t, 1.0))))
            lo += h.out_features
        self.all_binary = all(kind == "binary" and hi - lo == 1 for _, lo, hi, kind, _ in self.slices)
        # The heads as native_steps.cpp takes them: each task's kind and where its logits start (and end).
        self.native_kinds = [NATIVE_HEAD_KINDS[kind] for *_, kind, _ in self.slices]
        self.native_offsets = [lo for _, lo, *_ in self.slices] + [self.slices[-1][2]]
        self.weights = torch.tensor([w for *_, w in self.slices], dtype=flat.dtype, device=flat.device)
        self.bf16 = bf16
        self.input_dtype = torch.bfloat16 if bf16 else flat.dtype

    def _stacked_heads(self, heads: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """All heads' weights as one (K, width) view and their biases as one (K,) view, each with its
        gradient: every step places the head weights next to each other, then the head biases."""
        k, width = sum(h.out_features for h in heads), heads[0].in_features
        w, g_w = self.params.span(heads[0].weight, k * width)
        b, g_b = self.params.span(heads[0].bias, k)
        return w.view(k, width), g_w.view(k, width), b, g_b

    def prepare_inputs(self, images: torch.Tensor) -> torch.Tensor:
        """The whole training set's images, flattened to (N, 784) in `input_dtype`, ready for `select`."""
        return images.reshape(images.shape[0], -1).to(self.input_dtype)

    def _first_layer(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """x @ w.T + b for the 784-wide first layer: with `bf16` the product in bf16 (fp32 accumulation,
        the result rounded once) and the bias added in fp32, as the C++ step does it; else in fp32."""
        if self.bf16:
            return torch.add(b, torch.mm(x, w.to(torch.bfloat16).t()))
        return torch.addmm(b, x, w.t())

    def _first_layer_grad(self, d: torch.Tensor, x: torch.Tensor, out: torch.Tensor) -> None:
        """The first layer's weight gradient d.T @ x into `out` (fp32), in the precision of the forward."""
        if self.bf16:
            out.copy_(torch.mm(d.t().to(torch.bfloat16), x))
        else:
            torch.mm(d.t(), x, out=out)

    def prepare_targets(self, targets: dict[str, torch.Tensor]) -> torch.Tensor:
        """The whole training set's targets as (N, T) floats in task order (a class as its index), the
        form `select` slices a batch from and the C++ step reads."""
        return torch.stack([targets[t].to(self.weights.dtype) for t in self.tasks], dim=1)

    @staticmethod
    def select(prepared, idx: torch.Tensor):
        if isinstance(prepared, torch.Tensor):
            return prepared.index_select(0, idx)
        return {t: v.index_select(0, idx) for t, v in prepared.items()}

    def _loss_grad(self, z: torch.Tensor, targets, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(task losses in task order, d(sum_t w_t L_t)/dz)."""
        if self.all_binary:  # one logit per task: binary cross-entropy for all of them at once
            losses = F.binary_cross_entropy_with_logits(z, targets, reduction="none").mean(0)
            return losses, (torch.sigmoid(z) - targets).mul_(self.weights / n)
        dz = torch.empty_like(z)
        losses = []
        for i, (_, lo, hi, kind, w) in enumerate(self.slices):
            y = targets[:, i]
            if kind == "multiclass":
                zt = z[:, lo:hi]
                y = y.long()
                losses.append(F.cross_entropy(zt, y))
                d = torch.softmax(zt, dim=1)
                d[torch.arange(n, device=d.device), y] -= 1.0
                dz[:, lo:hi] = d.mul_(w / n)
            elif kind == "binary":
                zt, yf = z[:, lo], y
                losses.append(F.binary_cross_entropy_with_logits(zt, yf))
                dz[:, lo] = (torch.sigmoid(zt) - yf).mul_(w / n)
            else:  # regression: MSE on sigmoid(z)
                s = torch.sigmoid(z[:, lo])
                diff = s - y
                losses.append(diff.square().mean())
                dz[:, lo] = diff * s * (1 - s) * (2 * w / n)
        return torch.stack(losses), dz


class HardSharingStep(_HeadsStep):
    """Forward, loss and backward of `HardSharingMLP` with static loss weights, writing the gradient of
    sum_t w_t L_t into the flat gradient buffer. `__call__` returns the (unweighted) task losses as one
    tensor in task order. When every task is binary (the study's pairs), the losses and their
    gradients are computed for all tasks at once.

    With `bf16=True` the first layer's two matrix products (784 x 64, forward and weight gradient:
    about 96 % of the step's arithmetic) run in bfloat16 with float32 accumulation, as autocast would
    run them; the inputs are then bfloat16 (`input_dtype`), everything else stays float32, and so do
    the weights the optimiser updates."""

    def __init__(self, model: HardSharingMLP, weights: dict[str, float], bf16: bool = False):
        lin1, lin2 = model.trunk[1], model.trunk[3]
        heads = [model.heads[t] for t in model.tasks]
        # Head weights next to each other (then head biases), so all heads are one (K, 32) matmul.
        order = [lin1.weight, lin1.bias, lin2.weight, lin2.bias, *(h.weight for h in heads), *(h.bias for h in heads)]
        self.params = FlatParameters(order)
        self.w1, self.b1, self.w2, self.b2 = lin1.weight.data, lin1.bias.data, lin2.weight.data, lin2.bias.data
        self.g_w1, self.g_b1 = self.params.grad_of(lin1.weight), self.params.grad_of(lin1.bias)
        self.g_w2, self.g_b2 = self.params.grad_of(lin2.weight), self.params.grad_of(lin2.bias)
        self.wh, self.g_wh, self.bh, self.g_bh = self._stacked_heads(heads)
        self._init_heads(model, heads, weights, bf16)

    def native_args(self) -> tuple[int, list[torch.Tensor], list[torch.Tensor]]:
        """(kind, parameters, gradients) as `native_steps.cpp` takes them (one column, feature-major
        shapes: views of the same buffers)."""
        h1, h2, k = self.w1.shape[0], self.w2.shape[0], self.wh.shape[0]
        p = [self.w1, self.b1.view(h1, 1), self.w2.view(1, h2, h1), self.b2.view(1, h2, 1), self.wh, self.bh.view(k, 1)]
        g = [self.g_w1, self.g_b1.view(h1, 1), self.g_w2.view(1, h2, h1), self.g_b2.view(1, h2, 1), self.g_wh]
        return NATIVE_HARD, p, [*g, self.g_bh.view(k, 1)]

    def __call__(self, x: torch.Tensor, targets) -> torch.Tensor:
        """One step's gradients for inputs `x` and `targets` (from `select`, or a dict per task).
        Every tensor here is a parameter's `.data` or an input, so autograd records nothing without a
        `no_grad` context (entering one each step costs a few microseconds)."""
        if isinstance(targets, dict):
            targets = self.prepare_targets(targets)
        x = x.reshape(x.shape[0], -1).to(self.input_dtype)
        r1 = self._first_layer(x, self.w1, self.b1).clamp_min_(0)
        r2 = torch.addmm(self.b2, r1, self.w2.t()).clamp_min_(0)
        z = torch.addmm(self.bh, r2, self.wh.t())
        losses, dz = self._loss_grad(z, targets, x.shape[0])
        torch.mm(dz.t(), r2, out=self.g_wh)
        torch.sum(dz, 0, out=self.g_bh)
        d2 = torch.ops.aten.threshold_backward(dz @ self.wh, r2, 0)  # ReLU's gradient in one op
        torch.mm(d2.t(), r1, out=self.g_w2)
        torch.sum(d2, 0, out=self.g_b2)
        d1 = torch.ops.aten.threshold_backward(d2 @ self.w2, r1, 0)
        self._first_layer_grad(d1, x, self.g_w1)
        torch.sum(d1, 0, out=self.g_b1)
        return losses


class _PerTaskHeads(_HeadsStep):
    """Steps whose heads each read their own features (a column's, or a task's gated mixture): every
    head's weight and bias, and their gradients, one entry per task, and the heads' forward and backward."""

    def _init_heads(self, model: MultiTaskModel, heads: list, weights: dict[str, float], bf16: bool) -> None:
        super()._init_heads(model, heads, weights, bf16)
        self.wh = [h.weight.data for h in heads]
        self.bh = [h.bias.data for h in heads]
        self.g_wh = [self.params.grad_of(h.weight) for h in heads]
        self.g_bh = [self.params.grad_of(h.bias) for h in heads]

    def _heads_forward(self, features) -> torch.Tensor:
        """All heads' outputs side by side, (B, K): head i on `features[i]` (B, width)."""
        return torch.cat([torch.addmm(b, f, w.t()) for f, w, b in zip(features, self.wh, self.bh)], dim=1)

    def _heads_backward(self, dz: torch.Tensor, features, d_features) -> None:
        """The heads' gradients from dz (B, K), and the gradient at `features[i]` into `d_features[i]`."""
        for (_, lo, hi, _, _), f, w, g_w, g_b, d_f in zip(
            self.slices, features, self.wh, self.g_wh, self.g_bh, d_features
        ):
            d = dz[:, lo:hi]
            torch.mm(d.t(), f, out=g_w)
            torch.sum(d, 0, out=g_b)
            torch.mm(d, w, out=d_f)


class ColumnsStep(_PerTaskHeads):
    """Forward, loss and backward of the stacked-column MLPs with static loss weights, into the flat
    gradient buffer; `__call__` returns the task losses in task order. STL: T independent columns.
    Cross-stitch: the same columns, mixed after each hidden ReLU by a T x T alpha matrix (their
    gradients too; the alphas sit last in the flat buffer, so the optimiser can give them their own
    learning rate).

    The step runs feature-major: activations are (T, width, B), so the first layer is one
    (T*64, 784) x (784, B) product, the second one batched product, and the mixing a (T, T) x
    (T, width*B) product, all on contiguous memory with no transposed copies (a batch-major layout
    needs five). The heads read the second unit's mixed features through one folded (K, T*32) matrix
    whose block (i, j) is alpha2[i, j] * head_i (block-diagonal for STL): one product forward and two
    back instead of per-head products and the mixing's own. (Folding the first unit into the second
    layer the same way doubles that layer's arithmetic, which costs more than the mixing it saves.)
    The heads' and alpha2's gradients come from the folded matrix's gradient by the product rule;
    `tests/test_fastpath.py` checks every gradient against autograd. `bf16` as in `HardSharingStep`."""

    def __init__(self, model: STLMLP | CrossStitchMLP, weights: dict[str, float], bf16: bool = False):
        heads = [model.heads[t] for t in model.tasks]
        alphas = model.alpha_parameters()
        order = [model.w1, model.b1, model.w2, model.b2, *(h.weight for h in heads), *(h.bias for h in heads)]
        self.params = FlatParameters([*order, *alphas])
        self.n = len(model.tasks)
        self.alpha_numel = sum(a.numel() for a in alphas)  # the tail of the flat buffer
        t, h1, width = model.w1.shape
        self.h2 = model.w2.shape[1]
        # The stacked layers as the step runs them: first layers as one (T*64, 784) matrix, biases as columns.
        self.w1, self.g_w1 = model.w1.data.view(t * h1, width), self.params.grad_of(model.w1).view(t * h1, width)
        self.b1, self.g_b1 = model.b1.data.view(t * h1, 1), self.params.grad_of(model.b1).view(t * h1, 1)
        self.w2, self.g_w2 = model.w2.data, self.params.grad_of(model.w2)
        self.b2, self.g_b2 = model.b2.data.unsqueeze(2), self.params.grad_of(model.b2).unsqueeze(2)
        self.alphas = [a.data for a in alphas]  # [] for STL
        self.g_alphas = [self.params.grad_of(a) for a in alphas]
        self._init_heads(model, heads, weights, bf16)
        # The heads' weights side by side, then their biases (as columns): what the folded heads are built from.
        self.wh_all, self.g_wh_all, bh, g_bh = self._stacked_heads(heads)
        self.bh_all, self.g_bh_all = bh.view(-1, 1), g_bh.view(-1, 1)
        flat = self.params.flat.data
        self.no_mixing = torch.eye(t, dtype=flat.dtype, device=flat.device)  # STL's "alphas"

    def _first_layer_t(self, x: torch.Tensor) -> torch.Tensor:
        """(w1 @ x.T + b1) as (T*64, B) in fp32: with `bf16` the product in bf16 (fp32 accumulation, the
        result rounded once), the bias added in fp32, as the C++ step does it."""
        if self.bf16:
            return torch.add(self.b1, torch.mm(self.w1.to(torch.bfloat16), x.t()))
        return torch.addmm(self.b1, self.w1, x.t())

    def native_args(self) -> tuple[int, list[torch.Tensor], list[torch.Tensor]]:
        """(kind, parameters, gradients) as `native_steps.cpp` takes them."""
        p = [self.w1, self.b1, self.w2, self.b2, self.wh_all, self.bh_all, *self.alphas]
        g = [self.g_w1, self.g_b1, self.g_w2, self.g_b2, self.g_wh_all, self.g_bh_all, *self.g_alphas]
        return (NATIVE_CROSS_STITCH if self.alphas else NATIVE_STL), p, g

    def _mix(self, unit: int, h: torch.Tensor) -> torch.Tensor:
        """Column i reads sum_j alpha[i, j] h_j; h is (T, ...) contiguous (no-op for STL)."""
        if not self.alphas:
            return h
        return (self.alphas[unit] @ h.view(self.n, -1)).view(h.shape)

    def _unmix(self, unit: int, h: torch.Tensor, d_mixed: torch.Tensor) -> torch.Tensor:
        """The gradient through `_mix`: writes d/d alpha and returns d/dh (no-op for STL)."""
        if not self.alphas:
            return d_mixed
        flat_d = d_mixed.view(self.n, -1)
        torch.mm(flat_d, h.view(self.n, -1).t(), out=self.g_alphas[unit])
        return (self.alphas[unit].t() @ flat_d).view(h.shape)

    def __call__(self, x: torch.Tensor, targets) -> torch.Tensor:
        """One step's gradients for inputs `x` and `targets` (from `select`, or a dict per task). As in
        `HardSharingStep`, everything is `.data` or an input: autograd records nothing."""
        if isinstance(targets, dict):
            targets = self.prepare_targets(targets)
        t, h2 = self.n, self.h2
        x = x.reshape(x.shape[0], -1).to(self.input_dtype)
        n = x.shape[0]
        r1 = self._first_layer_t(x).clamp_min_(0).view(t, -1, n)  # (T, 64, B)
        m1 = self._mix(0, r1)
        r2 = torch.baddbmm(self.b2, self.w2, m1).clamp_min_(0)  # (T, 32, B)
        r2_all = r2.view(t * h2, n)
        a2 = self.alphas[1] if self.alphas else self.no_mixing
        whm = self._folded_heads(a2)  # (K, T*32)
        z = torch.addmm(self.bh_all, whm, r2_all).t()  # (B, K), a view
        losses, dz = self._loss_grad(z, targets, n)
        dz_t = dz.t()  # (K, B)
        g_whm = dz_t @ r2_all.t()
        torch.sum(dz_t, 1, keepdim=True, out=self.g_bh_all)
        d2 = torch.ops.aten.threshold_backward((whm.t() @ dz_t).view(t, h2, n), r2, 0)  # (T, 32, B)
        torch.bmm(d2, m1.transpose(1, 2), out=self.g_w2)
        torch.sum(d2, 2, keepdim=True, out=self.g_b2)
        d1 = torch.ops.aten.threshold_backward(self._unmix(0, r1, torch.bmm(self.w2.transpose(1, 2), d2)), r1, 0)
        d1 = d1.view(-1, n)  # (T*64, B)
        self._first_layer_grad(d1.t(), x, self.g_w1)
        torch.sum(d1, 1, keepdim=True, out=self.g_b1)
        self._unfold_heads(a2, g_whm)
        return losses

    def _folded_heads(self, a2: torch.Tensor) -> torch.Tensor:
        """The heads reading the mixed features: task i's rows, block j, are alpha2[i, j] * head_i."""
        if self.all_binary:  # one row per task: all heads at once
            return (a2[:, :, None] * self.wh_all[:, None, :]).view(self.n, -1)
        return torch.cat([(a2[i][:, None, None] * w[None]).transpose(0, 1).reshape(w.shape[0], -1)
                          for i, w in enumerate(self.wh)])  # fmt: skip

    def _unfold_heads(self, a2: torch.Tensor, g_whm: torch.Tensor) -> None:
        """The heads' and (cross-stitch) alpha2's gradients from the folded heads' gradient."""
        mixing = bool(self.alphas)
        if self.all_binary:
            g = g_whm.view(self.n, self.n, -1)  # (task i, column j, feature)
            torch.sum(g * a2[:, :, None], 1, out=self.g_wh_all)
            if mixing:
                torch.sum(g * self.wh_all[:, None, :], 2, out=self.g_alphas[1])
            return
        for i, (_, lo, hi, _, _) in enumerate(self.slices):
            g = g_whm[lo:hi].view(hi - lo, self.n, -1)  # (output, column j, feature)
            torch.sum(g * a2[i][None, :, None], 1, out=self.g_wh[i])
            if mixing:
                torch.sum(g * self.wh[i][:, None, :], (0, 2), out=self.g_alphas[1][i])


class MMoEStep(_PerTaskHeads):
    """Forward, loss and backward of `MMoEMLP` (E experts, a softmax gate per task) with static loss
    weights, into the flat gradient buffer; `__call__` returns the task losses in task order.

    The experts' first layers and every task's gate read the same image: their weights sit next to each
    other in the flat buffer (and so do their biases), so they are one (B, 784) x (784, E*64 + T*E)
    product forward and one weight-gradient product back (in bf16 with `bf16`, as in `HardSharingStep`).
    Head t reads sum_e gate_t[e] * expert_e; the gates' gradient goes back through their softmax."""

    def __init__(self, model: MMoEMLP, weights: dict[str, float], bf16: bool = False):
        heads = [model.heads[t] for t in model.tasks]
        gates = [model.gates[t] for t in model.tasks]
        order = [model.w1, *(g.weight for g in gates), model.b1, *(g.bias for g in gates), model.w2, model.b2]
        self.params = FlatParameters([*order, *(h.weight for h in heads), *(h.bias for h in heads)])
        self.n_experts, self.h1 = model.w1.shape[:2]
        rows = self.n_experts * self.h1 + len(gates) * self.n_experts  # expert units, then gate logits
        # w1: the first layer as the step runs it, the experts' units and the gates in one matrix.
        w1, g_w1 = self.params.span(model.w1, rows * model.w1.shape[2])
        self.w1, self.g_w1 = w1.view(rows, -1), g_w1.view(rows, -1)
        self.b1, self.g_b1 = self.params.span(model.b1, rows)
        self.w2, self.b2 = model.w2.data, model.b2.data
        self.g_w2, self.g_b2 = self.params.grad_of(model.w2), self.params.grad_of(model.b2)
        self._init_heads(model, heads, weights, bf16)
        self.wh_all, self.g_wh_all, self.bh_all, self.g_bh_all = self._stacked_heads(heads)

    def native_args(self) -> tuple[int, list[torch.Tensor], list[torch.Tensor]]:
        """(kind, parameters, gradients) as `native_steps.cpp` takes them (feature-major: biases as columns)."""
        e, h2 = self.w2.shape[:2]
        p = [self.w1, self.b1.view(-1, 1), self.w2, self.b2.view(e, h2, 1), self.wh_all, self.bh_all.view(-1, 1)]
        g = [self.g_w1, self.g_b1.view(-1, 1), self.g_w2, self.g_b2.view(e, h2, 1), self.g_wh_all]
        return NATIVE_MMOE, p, [*g, self.g_bh_all.view(-1, 1)]

    def __call__(self, x: torch.Tensor, targets) -> torch.Tensor:
        if isinstance(targets, dict):
            targets = self.prepare_targets(targets)
        e, h1, t = self.n_experts, self.h1, len(self.tasks)
        x = x.reshape(x.shape[0], -1).to(self.input_dtype)
        n = x.shape[0]
        a = self._first_layer(x, self.w1, self.b1)  # (B, E*64 + T*E)
        r1 = a[:, : e * h1].clamp_min(0).view(n, e, h1).transpose(0, 1)  # (E, B, 64)
        gate = torch.softmax(a[:, e * h1 :].view(n, t, e), dim=2)  # (B, T, E)
        r2 = torch.baddbmm(self.b2.unsqueeze(1), r1, self.w2.transpose(1, 2)).clamp_min_(0)  # (E, B, 32)
        r2_b = r2.transpose(0, 1)  # (B, E, 32), a view
        mixed = torch.bmm(gate, r2_b)  # (B, T, 32): head t reads sum_e gate_t[e] * expert_e
        losses, dz = self._loss_grad(self._heads_forward(mixed.unbind(1)), targets, n)
        d_mixed = torch.empty_like(mixed)
        self._heads_backward(dz, mixed.unbind(1), d_mixed.unbind(1))
        d_gate = torch.bmm(d_mixed, r2_b.transpose(1, 2))  # (B, T, E)
        d_logits = gate * (d_gate - (gate * d_gate).sum(2, keepdim=True))  # through the softmax
        d2 = torch.ops.aten.threshold_backward(torch.bmm(gate.transpose(1, 2), d_mixed).transpose(0, 1), r2, 0)
        torch.bmm(d2.transpose(1, 2), r1, out=self.g_w2)
        torch.sum(d2, 1, out=self.g_b2)
        d1 = torch.ops.aten.threshold_backward(torch.bmm(d2, self.w2), r1, 0)  # (E, B, 64)
        d_a = torch.cat([d1.transpose(0, 1).reshape(n, e * h1), d_logits.reshape(n, t * e)], 1)
        self._first_layer_grad(d_a, x, self.g_w1)
        torch.sum(d_a, 0, out=self.g_b1)
        return losses


def make_step(model: MultiTaskModel, weights: dict[str, float], bf16: bool = False) -> _HeadsStep:
    """The hand-written step for `model` (only where `steps.fast_path_refusal` says there is one)."""
    if isinstance(model, HardSharingMLP):
        return HardSharingStep(model, weights, bf16)
    if isinstance(model, MMoEMLP):
        return MMoEStep(model, weights, bf16)
    return ColumnsStep(model, weights, bf16)


class NativeLoop:
    """An epoch's batches run by the C++ loop (`native_steps.cpp`, built by `native.py`): for each batch
    the same gather, step, non-finite check and Adam update as `steps.FastStep`'s Python loop (torch's fused
    kernel), with no Python between a step's ~40 operations. For the steps with `native_args`: hard
    sharing, STL, cross-stitch and MMoE, with any mix of tasks."""

    def __init__(self, module, step: _HeadsStep, optimizer: FlatAdam):
        self.module, self.optimizer = module, optimizer
        self.kind, self.p, self.g = step.native_args()
        self.weights, self.bf16 = step.weights, step.bf16
        self.kinds, self.offsets = step.native_kinds, step.native_offsets

    def run(self, x_all, y_all, batches: list[torch.Tensor], begin: int, end: int, sums: torch.Tensor, threads=0):
        """Batches [begin, end) on `threads` threads (0: torch's current count): (the last losses, the
        first batch whose loss is not finite or -1). `sums` accumulates each batch's losses times its size."""
        opt = self.optimizer
        group = opt.param_groups[0]
        p = group["params"][0]
        state = opt.state[p]
        parts = opt.parts()
        out = self.module.train_batches(
            self.kind, x_all, y_all, batches, begin, end, self.p, self.g, self.weights, self.kinds, self.offsets,
            self.bf16,
            [p.data[s] for s, _, _ in parts], [p.grad[s] for s, _, _ in parts],
            [state["exp_avg"][s] for s, _, _ in parts], [state["exp_avg_sq"][s] for s, _, _ in parts],
            state["step"], [lr for _, lr, _ in parts], [decay for _, _, decay in parts], opt.decoupled,
            *group["betas"], group["eps"], sums, threads,
        )  # fmt: skip
        opt._opt_called = True  # what the Optimizer wrapper would record; LR schedulers check it
        return out


def native_loop(step: _HeadsStep, optimizer: FlatAdam) -> tuple[NativeLoop | None, str]:
    """The C++ loop for `step` where it is built, else (None, why not)."""
    module = native.get()
    if module is None:
        return None, native.reason()
    return NativeLoop(module, step, optimizer), ""


class ThreadPicker:
    """Which thread count the next chunk of batches runs on: one, or every thread the run may use now.

    On this 2-core machine the answer changes with the load: measured on the same code, two threads
    were 1.2-1.35x faster per MLP epoch while the machine was quiet and one thread 1.05-1.26x faster
    while something else ran (a second thread then waits on a busy core at every parallel operation).
    So each count's cost per batch over its last few chunks is tracked (the median: one chunk is a few
    milliseconds, and noisy), the cheaper one runs, and every `retry` chunks the other gets one chunk,
    to notice when the load changes. The first pick waits for `window` chunks of each, taken in turns: a
    first pick on one chunk each (one of which may meet a cold cache or a spell's start) once ran
    cross-stitch on the slower count for 117 of an epoch's 469 batches. One thread must be `margin`
    cheaper to be picked: all the cores are what the run was given, and a wrong switch to one costs more
    than a missed one."""

    def __init__(self, retry: int = 24, window: int = 3, margin: float = 0.05):
        self.retry, self.window, self.margin = retry, window, margin
        self.costs: dict[int, list[float]] = {}  # seconds per batch, the last `window` chunks
        self.since: dict[int, int] = {}  # chunks since each count last ran
        self.warm: set[int] = set()  # counts whose first chunk (thread start-up, kernel set-up) is behind them

    def cost(self, threads: int) -> float:
        return statistics.median(self.costs[threads])

    def choose(self, allowed: int) -> int:
        if allowed <= 1:
            return 1
        measured = {n: len(self.costs.get(n, ())) for n in (allowed, 1)}
        if min(measured.values()) < self.window:  # the two take turns until each has a full window
            return allowed if measured[allowed] <= measured[1] else 1
        for n in (allowed, 1):  # not measured for a while
            if self.since[n] >= self.retry:
                return n
        return 1 if self.cost(1) < (1 - self.margin) * self.cost(allowed) else allowed

    def record(self, threads: int, seconds_per_batch: float) -> None:
        for n in self.since:
            self.since[n] += 1
        self.since[threads] = 0
        if threads not in self.warm:  # a count's first chunk pays its start-up: not a fair measurement
            self.warm.add(threads)
            return
        recent = self.costs.setdefault(threads, [])
        recent.append(seconds_per_batch)
        del recent[: -self.window]
