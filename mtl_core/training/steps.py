"""How batches become updates: the `TrainStep` interface that `Training`'s one epoch loop drives, its two
members (the autograd reference, for any model and any loss weighting; the MLPs' hand-written fast path,
`fastpath.py`), and `choose_step`, the one place that picks a run's step and says why.
"""

from __future__ import annotations

import contextlib
import math
import time

import torch

from mtl_core.config import TrainConfig
from mtl_core.metrics import task_loss
from mtl_core.models import STLMLP, CrossStitchMLP, HardSharingMLP, MMoEMLP, MultiTaskModel, use_native_pooling
from mtl_core.models.batchfold import patch_moments
from mtl_core.training.fastpath import FlatAdam, FlatParameters, ThreadPicker, make_step, native_loop
from mtl_core.weighting import Weighting

# Batches the C++ loop runs between two looks at Stop and progress (about 5-10 ms).
NATIVE_CHUNK = 16

# A diverged batch: its index in the epoch and its task losses.
Diverged = tuple[int, dict[str, torch.Tensor]]


class TrainStep:
    """What `Training` needs from a way of training. The step owns the optimiser and the epoch's loss sums;
    the loop owns the batches, Stop, progress and the conflict probes, and calls `run` on `chunk` batches
    at a time. `path`, `kernel` and `reason` are what the run's record and details show."""

    path = ""  # "autograd" or "fast"
    kernel: str | None = None  # the loop that ran the batches ("C++", "Python"), or an own kernel it used
    reason = ""  # why not a faster step ("" when nothing was refused)
    precision = "fp32"
    optimizer: torch.optim.Optimizer
    thread_batches: dict[str, int] | None = None  # the C++ loop's batches per thread count, this epoch

    @property
    def chunk(self) -> int:
        """Batches per `run` call: how often the loop looks at Stop and reports progress."""
        return 1

    def autocast(self) -> contextlib.AbstractContextManager:
        """The precision the model runs in, in training and in evaluation."""
        return contextlib.nullcontext()

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """A batch of images in the memory layout the model takes."""
        return x

    def begin_epoch(self) -> None:
        raise NotImplementedError

    def run(self, batches: list[torch.Tensor], begin: int, end: int) -> Diverged | None:
        """Train on `batches[begin:end]`: None, or the first batch whose loss is not finite (nothing after it
        is run, and its update is not applied)."""
        raise NotImplementedError

    def end_epoch(self, n_seen: int) -> tuple[dict[str, float], float]:
        """The epoch's mean loss per task over `n_seen` digits, and the mean objective it minimised."""
        raise NotImplementedError


def split_shared(model: MultiTaskModel) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
    """The model's shared parameters, and all the others."""
    shared = model.shared_parameters()
    ids = {id(p) for p in shared}
    return shared, [p for p in model.parameters() if id(p) not in ids]


def make_optimizer(
    config: TrainConfig, model: MultiTaskModel, device: torch.device, extra: list[torch.nn.Parameter] | None = None
) -> torch.optim.Optimizer:
    alphas = {id(p) for p in model.alpha_parameters()}
    groups = [{"params": [p for p in model.parameters() if id(p) not in alphas], "lr": config.lr}]
    # Weight decay is for the network's weights. The cross-stitch alphas (mixing weights) and learned
    # loss log-variances would be pulled toward 0 by it, which means something else for them.
    if alphas:
        # Misra et al. scale the cross-stitch learning rate up (1e2 to 1e3) so the alphas move at all.
        groups.append({"params": model.alpha_parameters(), "lr": config.lr * config.alpha_lr_mult, "weight_decay": 0.0})
    if extra:  # learned loss weights train at the network's learning rate
        groups.append({"params": extra, "lr": config.lr, "weight_decay": 0.0})
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    # The fused kernel is several times cheaper per step for these small models (RECIPES.md).
    return cls(groups, lr=config.lr, weight_decay=config.weight_decay, fused=device.type in ("cpu", "cuda"))


def flat_adam(config: TrainConfig, flat: FlatParameters, tail: int) -> FlatAdam:
    """One fused Adam (AdamW) call over `flat`; its last `tail` values (the alphas) at their own rate."""
    decoupled = config.optimizer == "adamw"
    return FlatAdam(flat.flat, config.lr, config.weight_decay, decoupled, tail=tail, tail_lr_mult=config.alpha_lr_mult)


class AutogradStep(TrainStep):
    """The reference: the model's forward, the task losses, and the weighting method's backward
    (`weighting.py`), for any model and any loss weighting. A CNN's first conv + BatchNorm run as one
    convolution (`batchfold.py`) and its max-pool in C++ where that is built (`native_pool.cpp`)."""

    path = "autograd"

    def __init__(
        self,
        config: TrainConfig,
        model: MultiTaskModel,
        weighting: Weighting,
        train_x: torch.Tensor,
        train_t: dict[str, torch.Tensor],
        precision: str,
        reason: str,
        channels_last: bool = False,
    ):
        self.model, self.weighting, self.tasks = model, weighting, config.tasks
        self.x, self.targets, self.device = train_x, train_t, train_x.device
        self.precision, self.reason, self.channels_last = precision, reason, channels_last
        self.shared, self.others = split_shared(model)
        self.optimizer = self._optimizer(config)
        # The CNNs' max-pooling in C++ where this machine has it: the same values and gradients as torch's,
        # without its int64 indices and zero-filled gradient. Only on the CPU and for channels_last batches.
        if channels_last and self.device.type == "cpu" and use_native_pooling(model):
            self.kernel = "C++ max-pool"
        # The patch moments of the folded first block: computed once here, about a second for 60,000 digits.
        first_conv = getattr(model, "first_conv", None)
        self.patch_moments = None if first_conv is None else patch_moments(train_x, first_conv())

    def _optimizer(self, config: TrainConfig) -> torch.optim.Optimizer:
        if config.loss_weighting == "static" and config.optimizer in ("adam", "adamw"):
            # Autograd writes into one flat gradient and one fused Adam call updates everything: the
            # per-parameter bookkeeping of torch's Adam costs about 3 % of a CNN step here.
            alphas = self.model.alpha_parameters()
            alpha_ids = {id(a) for a in alphas}
            flat = FlatParameters([p for p in self.model.parameters() if id(p) not in alpha_ids] + alphas)
            flat.bind_grads()
            return flat_adam(config, flat, tail=sum(a.numel() for a in alphas))
        return make_optimizer(config, self.model, self.device, list(self.weighting.parameters()))

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def begin_epoch(self) -> None:
        self.model.train()
        self.sums = {t: torch.zeros((), device=self.device) for t in self.tasks}
        self.objective = torch.zeros((), device=self.device)
        # FlatAdam's update without the Optimizer wrapper's bookkeeping (about 0.15 ms a CNN step).
        self._update = self.optimizer.update if isinstance(self.optimizer, FlatAdam) else self.optimizer.step

    def run(self, batches: list[torch.Tensor], begin: int, end: int) -> Diverged | None:
        model, weighting, tasks = self.model, self.weighting, self.tasks
        for b in range(begin, end):
            idx = batches[b].to(self.device)
            xb = self.inputs(self.x.index_select(0, idx))
            extra = {}
            if self.patch_moments is not None:  # the first conv + BatchNorm as one convolution
                extra["patch_moments"] = tuple(m.index_select(0, idx) for m in self.patch_moments)
            with self.autocast():
                out = model(xb, **extra)
            targets = {t: self.targets[t].index_select(0, idx) for t in tasks}
            losses = {t: task_loss(t, out[t].float(), targets[t]) for t in tasks}
            if not math.isfinite(torch.stack([v.detach() for v in losses.values()]).sum().item()):
                return b, losses
            self.optimizer.zero_grad(set_to_none=True)
            # The weighting method owns the backward and says what it minimised.
            if weighting.needs_representation:  # MGDA-UB: the trunk's output of this forward pass
                total = weighting.backward(losses, self.shared, self.others, representation=model.representation)
            else:
                total = weighting.backward(losses, self.shared, self.others)
            self._update()
            if weighting.needs_losses_after_step:  # FAMO: how much each loss fell on this batch
                saved = [buf.clone() for buf in model.buffers()]  # a look, not a second training step:
                with torch.no_grad(), self.autocast():
                    again = model(xb)
                    for buf, value in zip(model.buffers(), saved):  # BatchNorm's statistics are put back
                        buf.copy_(value)
                weighting.after_step({t: task_loss(t, again[t].float(), targets[t]) for t in tasks})
            else:
                weighting.after_step()
            for t in tasks:
                self.sums[t] += losses[t].detach() * len(idx)
            self.objective += total * len(idx)
        return None

    def end_epoch(self, n_seen: int) -> tuple[dict[str, float], float]:
        mean = {t: (s / max(n_seen, 1)).item() for t, s in self.sums.items()}
        self.weighting.end_epoch(mean)
        # What was minimised, learned weights (and their log-variance terms) included.
        return mean, (self.objective / max(n_seen, 1)).item()


class FastStep(TrainStep):
    """The MLPs' hand-written step (`fastpath.py`: no autograd graph, one flat buffer, one fused Adam call),
    static loss weights only. One step, two drivers of the same maths: the C++ loop (`native_steps.cpp`)
    runs `NATIVE_CHUNK` batches per call where it is built and the run is on the CPU, else the Python loop
    below runs one. The Python loop is kept bare on purpose: at about 0.4 ms a step, each extra Python call
    or tensor operation per batch costs a percent or more. No autocast: with bf16 the step casts its first
    layer itself, and the model is evaluated in fp32, as the Compare and Draw pages score it later."""

    path = "fast"

    def __init__(
        self,
        config: TrainConfig,
        model: MultiTaskModel,
        train_x: torch.Tensor,
        train_t: dict[str, torch.Tensor],
        precision: str,
        pick_threads: bool = True,
    ):
        self.tasks, self.device, self.precision = config.tasks, train_x.device, precision
        self.weights = {t: config.weight(t) for t in config.tasks}
        self.hand = make_step(model, self.weights, bf16=precision == "bf16")  # the hand-written maths
        self.optimizer = flat_adam(config, self.hand.params, tail=getattr(self.hand, "alpha_numel", 0))
        self.x, self.targets = self.hand.prepare_inputs(train_x), self.hand.prepare_targets(train_t)
        # The C++ loop only on the CPU: that is where Python's cost per operation shows.
        self.native, why = native_loop(self.hand, self.optimizer) if self.device.type == "cpu" else (None, "")
        self.kernel, self.reason = ("C++", "") if self.native else ("Python", why)
        self.pick_threads, self.picker = pick_threads, ThreadPicker()

    @property
    def chunk(self) -> int:
        return 1 if self.native is None else NATIVE_CHUNK

    def begin_epoch(self) -> None:
        self.sums = torch.zeros(len(self.tasks), device=self.device)
        self.thread_batches, self._used = None, {}

    def run(self, batches: list[torch.Tensor], begin: int, end: int) -> Diverged | None:
        if self.native is not None:
            return self._run_native(batches, begin, end)
        hand, x_all, targets, sums, update = self.hand, self.x, self.targets, self.sums, self.optimizer.update
        on_cpu = self.device.type == "cpu"
        for b in range(begin, end):
            idx = batches[b] if on_cpu else batches[b].to(self.device)
            vec = hand(x_all.index_select(0, idx), hand.select(targets, idx))  # writes the gradients, no graph
            if not math.isfinite(torch.dot(vec, hand.weights).item()):
                return b, dict(zip(self.tasks, vec))
            update()
            sums.add_(vec, alpha=len(idx))
        return None

    def _run_native(self, batches: list[torch.Tensor], begin: int, end: int) -> Diverged | None:
        allowed = torch.get_num_threads()  # (a worker's stop check sets the threads it may use)
        threads = self.picker.choose(allowed) if self.pick_threads else allowed
        t0 = time.perf_counter()
        losses, bad = self.native.run(self.x, self.targets, batches, begin, end, self.sums, threads)
        self.picker.record(threads, (time.perf_counter() - t0) / (end - begin))
        if bad >= 0:
            return bad, dict(zip(self.tasks, losses))
        self._used[threads] = self._used.get(threads, 0) + end - begin
        return None

    def end_epoch(self, n_seen: int) -> tuple[dict[str, float], float]:
        if self._used:
            self.thread_batches = {str(n): k for n, k in sorted(self._used.items())}
        mean = dict(zip(self.tasks, (self.sums / max(n_seen, 1)).tolist()))
        return mean, sum(self.weights[t] * v for t, v in mean.items())  # static weights only


def fast_path_refusal(config: TrainConfig, model: MultiTaskModel) -> str:
    """Why this run cannot take the fast path ("" when it can)."""
    if config.path == "autograd":
        return "the config asks for autograd"
    if not isinstance(model, (HardSharingMLP, STLMLP, CrossStitchMLP, MMoEMLP)):
        return f"no hand-written step for the {type(model).__name__}"
    if config.loss_weighting != "static":
        return f"{config.loss_weighting} loss weighting learns its weights through autograd"
    if config.optimizer not in ("adam", "adamw"):
        return f"the fast path uses fused Adam/AdamW, not {config.optimizer}"
    return ""


def bf16_is_native(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(config: TrainConfig, family: str, device: torch.device, fast_step: bool = False) -> str:
    """ "auto" picks bf16 where the hardware runs it natively and it pays: autocast for the CNN (about
    2x faster per epoch on this project's CPUs at the same accuracy) and the LeNets (2.8x a step with
    channels_last), and the first layer of the
    hand-written MLP steps (`fast_step`; 1.4-1.8x, same accuracy over seeds). An MLP on autograd
    (learned loss weights, SGD, path "autograd") stays fp32: there autocast's casts cost more than
    they save."""
    if config.precision != "auto":
        return config.precision
    if not bf16_is_native(device):
        return "fp32"
    return "bf16" if family != "mlp" or fast_step else "fp32"


def choose_step(
    config: TrainConfig,
    model: MultiTaskModel,
    weighting: Weighting,
    train_x: torch.Tensor,
    train_t: dict[str, torch.Tensor],
    channels_last: bool = False,
    pick_threads: bool = True,
) -> TrainStep:
    """The run's step: the fast path where the model has one and nothing needs autograd, else the autograd
    reference; its `reason` says why not faster. `train_x` and `train_t` are the whole training set on the
    run's device. `pick_threads`: the C++ loop picks one thread or all allowed per chunk of batches
    (`ThreadPicker`); False keeps torch's count (the benchmark's fixed-thread timings)."""
    refusal = fast_path_refusal(config, model)
    precision = resolve_precision(config, model.family, train_x.device, fast_step=not refusal)
    if refusal:
        return AutogradStep(config, model, weighting, train_x, train_t, precision, refusal, channels_last)
    return FastStep(config, model, train_x, train_t, precision, pick_threads)
