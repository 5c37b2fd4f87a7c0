"""Training as a generator: `Training(config, data).records()` yields one plain dict per epoch.

The library never prints; whoever drives the generator decides what a record is for (the worker
writes it to the run store, the CLI prints it, tests assert on it).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator

import numpy as np
import torch

from .batchfold import patch_moments
from .config import ConfigError, TrainConfig
from .data import MTLData, batch_indices
from .fastpath import FlatAdam, FlatParameters, ThreadPicker, fast_path_refusal, make_step, native_loop
from .metrics import MetricAccumulator, average_accuracy, mean_by_key, probabilities, selection_score, task_loss
from .models import MultiTaskModel, build_model, count_parameters, get_model_spec, use_native_pooling
from .tasks import make_targets
from .weighting import build_weighting, split_like, task_gradient_rows

# Batches the C++ loop runs between two looks at Stop and progress (about 5-10 ms).
NATIVE_CHUNK = 16
# Gradient-conflict probes per epoch: each costs one forward and one backward per task on one batch.
CONFLICT_PROBES = 4

EVAL_BATCH = 2048
DIVERGED_HINT = "kept the last good weights (try a smaller learning rate)"


def resolve_device(name: str, family: str = "cnn") -> torch.device:
    """ "auto": a CUDA GPU, where there is one, for the CNNs; the CPU for the MLPs (`family` "mlp")
    everywhere. An MLP step is a few dozen tiny kernels, too small to keep a GPU busy: on an H200 machine
    (benchmarks/gpu_check.py) hard sharing took 0.63 ms a step on CUDA against 0.32 ms on that machine's
    CPU. "cuda" puts any model on the GPU."""
    if name == "auto":
        return torch.device("cuda" if family == "cnn" and torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for, but no CUDA GPU is available on this machine")
    return torch.device(name)


def bf16_is_native(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(config: TrainConfig, family: str, device: torch.device, fast_step: bool = False) -> str:
    """ "auto" picks bf16 where the hardware runs it natively and it pays: autocast for the CNN (about
    2x faster per epoch on this project's CPUs at the same accuracy), and the first layer of the
    hand-written MLP steps (`fast_step`; 1.4-1.8x, same accuracy over seeds). An MLP on autograd
    (learned loss weights, SGD, path "autograd") stays fp32: there autocast's casts cost more than
    they save."""
    if config.precision != "auto":
        return config.precision
    if not bf16_is_native(device):
        return "fp32"
    return "bf16" if family == "cnn" or fast_step else "fp32"


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


def state_copy(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class Training:
    """One training run. Iterate `records()`; afterwards `model` holds the best checkpoint's weights,
    `status` is finished / cancelled / diverged and `reason` says why it stopped early."""

    def __init__(
        self,
        config: TrainConfig,
        data: MTLData,
        stop: Callable[[], bool] | None = None,
        conflict_probes: int = CONFLICT_PROBES,
        pick_threads: bool = True,
    ):
        """`pick_threads`: the C++ loop picks one thread or all allowed per chunk of batches (ThreadPicker);
        False keeps torch's count (the benchmark's fixed-thread timings)."""
        self.config = config
        self.pick_threads = pick_threads
        self.conflict_probes = conflict_probes  # per epoch; 0: no gradient-conflict record
        self._conflict: list[tuple[dict[str, float], dict[str, float], dict[str, float]]] = []
        self.device = resolve_device(config.device, get_model_spec(config.model).family)
        if config.train_limit:
            data = data.limited(n_train=config.train_limit)
        val_data = None
        if config.val_split:
            if config.val_split + config.batch_size > data.n_train:
                raise ConfigError(
                    f"a validation split of {config.val_split:,} digits leaves "
                    f"{max(0, data.n_train - config.val_split):,} of the {data.n_train:,} training digits, "
                    f"less than one batch of {config.batch_size}"
                )
            data, val_data = data.split_validation(config.val_split)
        # Where the best epoch is picked: held-out training digits, or (the reference studies' choice,
        # val_split 0) the test set itself, which then flatters the result a little.
        self.selection_split = "validation" if val_data is not None else "test"
        self.test_result: tuple[dict, dict] | None = None  # with a validation split: the test set, scored once
        if config.batch_size > data.n_train:
            raise ConfigError(f"batch size {config.batch_size} is larger than the {data.n_train:,} training digits")
        self.data = data
        self.stop = stop
        torch.manual_seed(config.seed)
        self.model = build_model(config.model, config.tasks, alpha_init=config.alpha_init).to(self.device)
        self.channels_last = config.channels_last and self.model.family == "cnn"
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.params = count_parameters(self.model)
        # The hand-written step where one exists and nothing needs autograd; the record says which.
        refusal = fast_path_refusal(self.model, config.loss_weighting, config.optimizer)
        if config.path == "autograd":
            refusal = "the config asks for autograd"
        self.precision = resolve_precision(config, self.model.family, self.device, fast_step=not refusal)
        weights = {t: config.weight(t) for t in config.tasks}
        self.weighting = build_weighting(config.loss_weighting, weights).to(self.device)
        self._shared = self.model.shared_parameters()
        shared_ids = {id(p) for p in self._shared}
        self._others = [p for p in self.model.parameters() if id(p) not in shared_ids]
        names = {id(p): n for n, p in self.model.named_parameters()}
        self._shared_names = [names[id(p)] for p in self._shared]
        if self.weighting.needs_shared and not self._shared:
            raise ConfigError(
                f"{self.weighting.title} balances the tasks' gradients on shared parameters, and "
                f"{config.model} shares none: choose hard sharing, cross-stitch or the CNN"
            )
        self.fast = None if refusal else make_step(self.model, weights, bf16=self.precision == "bf16")
        self.path, self.path_note = ("fast", "") if self.fast else ("autograd", refusal)
        self._fast_targets = None
        if self.fast is not None:
            self.optimizer = FlatAdam(
                self.fast.params.flat,
                config.lr,
                config.weight_decay,
                decoupled=config.optimizer == "adamw",
                tail=getattr(self.fast, "alpha_numel", 0),
                tail_lr_mult=config.alpha_lr_mult,
            )
        elif config.loss_weighting == "static" and config.optimizer in ("adam", "adamw"):
            # Autograd writes into one flat gradient and one fused Adam call updates everything: the
            # per-parameter bookkeeping of torch's Adam costs about 3 % of a CNN step here.
            alphas = self.model.alpha_parameters()
            alpha_ids = {id(a) for a in alphas}
            flat = FlatParameters([p for p in self.model.parameters() if id(p) not in alpha_ids] + alphas)
            flat.bind_grads()
            self.optimizer = FlatAdam(
                flat.flat,
                config.lr,
                config.weight_decay,
                decoupled=config.optimizer == "adamw",
                tail=sum(a.numel() for a in alphas),
                tail_lr_mult=config.alpha_lr_mult,
            )
        else:
            self.optimizer = make_optimizer(config, self.model, self.device, list(self.weighting.parameters()))
        self.scheduler = (
            torch.optim.lr_scheduler.StepLR(self.optimizer, config.step_size, config.gamma)
            if config.scheduler == "step"
            else None
        )
        # The fast path's batch loop in C++ where it is built (mtl_core/native.py), else in Python; the
        # record's `kernel` says which ran. Only on the CPU: that is where Python's per-op cost shows.
        self.native, self.kernel = None, None
        self._thread_picker, self._epoch_threads = ThreadPicker(), None
        if self.fast is not None:
            self.native, why = native_loop(self.fast, self.optimizer) if self.device.type == "cpu" else (None, "")
            self.kernel = "C++" if self.native else "Python"
            self.path_note = "" if self.native else why
        elif self.model.family == "cnn" and self.channels_last and self.device.type == "cpu":
            # The CNNs' max-pooling in C++ where this machine has it (mtl_core/native_pool.cpp): the same
            # values and gradients as torch's, without its int64 indices and zero-filled gradient.
            self.kernel = "C++ max-pool" if use_native_pooling(self.model) else None
        self.generator = torch.Generator().manual_seed(config.seed)
        self.status = "running"
        self.reason = ""
        self.best_epoch = 0
        self.best_score = -math.inf
        self.best_record: dict | None = None
        self.best_state = state_copy(self.model)
        self.train_seconds = 0.0
        self.history: list[dict] = []
        # How far the running epoch is, for whoever watches (the worker's heartbeat reports it).
        self.batch_done, self.batches_per_epoch = 0, 1
        tasks = config.tasks
        self._train_x = data.train_x.to(self.device)
        self._test_x = data.test_x.to(self.device)
        self._train_t = {k: v.to(self.device) for k, v in make_targets(data.train_y, tasks).items()}
        self._test_t = {k: v.to(self.device) for k, v in make_targets(data.test_y, tasks).items()}
        self._eval_sets = {"test": (self._test_x, self._test_t)}
        if val_data is not None:
            val_x, val_y = val_data
            self._eval_sets["validation"] = (
                val_x.to(self.device),
                {k: v.to(self.device) for k, v in make_targets(val_y, tasks).items()},
            )
        if self.fast is not None:
            self._fast_targets = self.fast.prepare_targets(self._train_t)
            self._fast_x = self.fast.prepare_inputs(self._train_x)
        # The CNNs' first block folds BatchNorm into its convolution from the images' patch moments
        # (mtl_core/batchfold.py): computed here once, about a second for 60,000 digits.
        first_conv = getattr(self.model, "first_conv", None)
        self._patch_moments = None if first_conv is None else patch_moments(self._train_x, first_conv())

    def _probe_batches(self) -> set[int]:
        """Which batches of this epoch the gradient-conflict probe looks at: evenly spread."""
        n = self.batches_per_epoch
        # At most one probe per 64 batches: on a short epoch (the embedded subset) the probes would cost
        # more than the training they watch.
        k = min(self.conflict_probes, max(1, n // 64))
        if self.conflict_probes <= 0 or len(self.config.tasks) < 2 or not self._shared:
            return set()
        return {min(n - 1, int((i + 0.5) * n / k)) for i in range(min(k, n))}

    def _probe_conflict(self, idx: torch.Tensor) -> None:
        """Each task's gradient on the shared parameters for this batch, as the weights are now: the cosine
        of every task pair and each gradient's norm (unweighted losses). Runs beside training, which it
        leaves untouched: BatchNorm statistics and the random state (dropout) are put back, so a run
        with probes trains exactly as one without."""
        model, tasks = self.model, self.config.tasks
        saved = [b.clone() for b in model.buffers()]
        rng = torch.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None
        xb = self._inputs(self._train_x.index_select(0, idx.to(self._train_x.device)))
        with torch.enable_grad(), self._autocast():
            out = model(xb)
        idx_t = idx.to(self.device)
        losses = [task_loss(t, out[t].float(), self._train_t[t].index_select(0, idx_t)) for t in tasks]
        rows = task_gradient_rows(losses, self._shared)
        with torch.no_grad():
            for b, v in zip(model.buffers(), saved):
                b.copy_(v)
        torch.set_rng_state(rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
        norms = [float(r.norm()) for r in rows]
        cos = {
            f"{tasks[i]}|{tasks[j]}": float(rows[i] @ rows[j]) / max(norms[i] * norms[j], 1e-20)
            for i in range(len(tasks))
            for j in range(i + 1, len(tasks))
        }
        self._conflict.append((cos, dict(zip(tasks, norms)), self._lookahead_affinity(xb, idx_t, rows)))

    def _lookahead_affinity(self, xb: torch.Tensor, idx: torch.Tensor, rows: list[torch.Tensor]) -> dict[str, float]:
        """Task affinity by lookahead (Fifty et al., NeurIPS 2021, "Efficiently Identifying Task Groupings"):
        for each task i, one gradient step of the run's learning rate on the shared parameters with task
        i's gradient alone, then Z_ij = 1 - L_j(after) / L_j(before) for every task j, on the same batch.
        Positive: a step for i also lowers j's loss. In eval mode (no dropout, BatchNorm statistics
        untouched), so before and after differ only by the step; the model itself is never changed."""
        from torch.func import functional_call

        model, tasks, lr = self.model, self.config.tasks, self.optimizer.param_groups[0]["lr"]
        targets = {t: self._train_t[t].index_select(0, idx) for t in tasks}
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():

                def losses(params: dict | None = None) -> dict[str, float]:
                    with self._autocast():
                        out = model(xb) if params is None else functional_call(model, params, (xb,))
                    return {t: float(task_loss(t, out[t].float(), targets[t])) for t in tasks}

                before = losses()
                affinity = {}
                for t, row in zip(tasks, rows):
                    step = split_like(row, self._shared)
                    after = losses({n: p - lr * g for n, p, g in zip(self._shared_names, self._shared, step)})
                    for u in tasks:
                        affinity[f"{t}|{u}"] = 1.0 - after[u] / max(before[u], 1e-12)
        finally:
            model.train(was_training)
        return affinity

    def _conflict_record(self) -> dict | None:
        """This epoch's probes, averaged: cosines per task pair, gradient norms per task, lookahead affinity
        per ordered pair, and how many probes."""
        probes, self._conflict = self._conflict, []
        if not probes:
            return None
        cos, norm, affinity = zip(*probes)
        return {
            "cos": mean_by_key(cos),
            "norm": mean_by_key(norm),
            "affinity": mean_by_key(affinity),  # "i|j": a step on task i, the change of task j's loss
            "probes": len(probes),
        }

    @torch.no_grad()
    def _gate_record(self) -> dict[str, list[float]] | None:
        """For a gated model (MMoE): each task's mean gate weight per expert over the first test digits,
        i.e. how much of each shared expert its head reads. None for models without gates."""
        gate_weights = getattr(self.model, "gate_weights", None)
        if gate_weights is None:
            return None
        weights = gate_weights(self._inputs(self._test_x[:EVAL_BATCH]))
        return {t: w.float().mean(0).tolist() for t, w in weights.items()}

    def _autocast(self):
        # Autocast for bf16 runs on autograd; the fast step casts its first layer itself and is
        # evaluated in fp32, as the Compare and Draw pages score it later.
        if self.precision == "bf16" and self.fast is None:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _inputs(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _train_epoch(self, epoch: int) -> dict[str, float] | None:
        """One pass over the training set; None when stopped (cancelled or diverged)."""
        if self.fast is not None:
            return self._fast_epoch(epoch)
        cfg, model, weighting = self.config, self.model, self.weighting
        # FlatAdam's update without the Optimizer wrapper's bookkeeping (about 0.15 ms a CNN step).
        update = self.optimizer.update if isinstance(self.optimizer, FlatAdam) else self.optimizer.step
        model.train()
        sums = {t: torch.zeros((), device=self.device) for t in cfg.tasks}
        objective = torch.zeros((), device=self.device)
        n_seen = 0
        batches = self._epoch_batches()
        probes = self._probe_batches()
        for b, idx in enumerate(batches):
            self.batch_done = b
            if self.stop is not None and self.stop():
                return self._cancelled(epoch)
            if b in probes:
                self._probe_conflict(idx)
            idx = idx.to(self.device)
            xb = self._inputs(self._train_x.index_select(0, idx))
            extra = {}
            if self._patch_moments is not None:  # the first conv + BatchNorm as one convolution
                extra["patch_moments"] = tuple(m.index_select(0, idx) for m in self._patch_moments)
            with self._autocast():
                out = model(xb, **extra)
            targets = {t: self._train_t[t].index_select(0, idx) for t in cfg.tasks}
            losses = {t: task_loss(t, out[t].float(), targets[t]) for t in cfg.tasks}
            if not math.isfinite(torch.stack([v.detach() for v in losses.values()]).sum().item()):
                return self._diverged(losses, epoch, b)
            self.optimizer.zero_grad(set_to_none=True)
            # The weighting method owns the backward (mtl_core/weighting.py) and says what it minimised.
            total = weighting.backward(losses, self._shared, self._others)
            update()
            if weighting.needs_losses_after_step:  # FAMO: how much each loss fell on this batch
                saved = [buf.clone() for buf in model.buffers()]  # a look, not a second training step:
                with torch.no_grad(), self._autocast():
                    again = model(xb)
                    for buf, value in zip(model.buffers(), saved):  # BatchNorm's statistics are put back
                        buf.copy_(value)
                weighting.after_step({t: task_loss(t, again[t].float(), targets[t]) for t in cfg.tasks})
            else:
                weighting.after_step()
            for t in cfg.tasks:
                sums[t] += losses[t].detach() * len(idx)
            objective += total * len(idx)
            n_seen += len(idx)
        # What was minimised, learned weights (and their log-variance terms) included.
        self._objective = (objective / max(n_seen, 1)).item()
        mean = {t: (s / max(n_seen, 1)).item() for t, s in sums.items()}
        weighting.end_epoch(mean)
        return mean

    def _epoch_batches(self) -> list[torch.Tensor]:
        """This epoch's index batches (cut at `max_batches`); records how many, for `epoch_done`."""
        batches = list(batch_indices(self.data.n_train, self.config.batch_size, self.generator))
        if self.config.max_batches:
            batches = batches[: self.config.max_batches]
        self.batches_per_epoch = len(batches)
        return batches

    def _native_epoch(self, epoch: int) -> dict[str, float] | None:
        """`_fast_epoch` with the batches run by the C++ loop, a chunk at a time: between chunks (a few ms)
        this loop checks Stop, reports progress and runs the conflict probes before their batch."""
        cfg, stop, picker = self.config, self.stop, self._thread_picker
        sums = torch.zeros(len(cfg.tasks), device=self.device)
        batches = self._epoch_batches()
        probes = sorted(self._probe_batches())
        b, n_seen, used = 0, 0, {}
        while b < len(batches):
            self.batch_done = b
            if stop is not None and stop():  # (a worker's stop check also sets the threads it may use)
                return self._cancelled(epoch)
            if b in probes:
                self._probe_conflict(batches[b])
            end = min([len(batches), b + NATIVE_CHUNK, *(q for q in probes if q > b)])
            threads = picker.choose(torch.get_num_threads()) if self.pick_threads else torch.get_num_threads()
            t0 = time.perf_counter()
            losses, bad = self.native.run(self._fast_x, self._fast_targets, batches, b, end, sums, threads)
            picker.record(threads, (time.perf_counter() - t0) / (end - b))
            if bad >= 0:
                return self._diverged(dict(zip(cfg.tasks, losses)), epoch, bad)
            used[threads] = used.get(threads, 0) + end - b
            n_seen += sum(len(idx) for idx in batches[b:end])
            b = end
        self._epoch_threads = {str(n): k for n, k in sorted(used.items())}
        return dict(zip(cfg.tasks, (sums / max(n_seen, 1)).tolist()))

    def _fast_epoch(self, epoch: int) -> dict[str, float] | None:
        """`_train_epoch` on the hand-written step. The loop is kept bare on purpose: at about 0.4 ms
        a step, each extra Python call or tensor operation per batch costs a percent or more."""
        if self.native is not None:
            return self._native_epoch(epoch)
        cfg, fast, stop, update = self.config, self.fast, self.stop, self.optimizer.update
        x_all, targets, weights, select = self._fast_x, self._fast_targets, fast.weights, fast.select
        on_cpu = self.device.type == "cpu"
        sums = torch.zeros(len(cfg.tasks), device=self.device)
        n_seen = 0
        batches = self._epoch_batches()
        probes = self._probe_batches()
        for b, idx in enumerate(batches):
            self.batch_done = b
            if stop is not None and stop():
                return self._cancelled(epoch)
            if b in probes:
                self._probe_conflict(idx)
            if not on_cpu:
                idx = idx.to(self.device)
            vec = fast(x_all.index_select(0, idx), select(targets, idx))  # writes the gradients, no graph
            if not math.isfinite(torch.dot(vec, weights).item()):
                return self._diverged(dict(zip(cfg.tasks, vec)), epoch, b)
            update()
            sums.add_(vec, alpha=len(idx))
            n_seen += len(idx)
        return dict(zip(cfg.tasks, (sums / max(n_seen, 1)).tolist()))

    @property
    def epoch_done(self) -> float:
        """How far through the running epoch (0..1): batches done over batches per epoch."""
        return min(1.0, self.batch_done / max(1, self.batches_per_epoch))

    def _cancelled(self, epoch: int) -> None:
        self.status, self.reason = "cancelled", f"Stop was pressed during epoch {epoch}"
        return None

    def _diverged(self, losses: dict[str, torch.Tensor], epoch: int, batch: int) -> None:
        bad = [t for t in self.config.tasks if not math.isfinite(losses[t].item())] or list(self.config.tasks)
        self.status = "diverged"
        self.reason = f"non-finite loss ({', '.join(bad)}) at epoch {epoch}, batch {batch + 1}; {DIVERGED_HINT}"
        return None

    def _non_finite(self, metrics: dict, losses: dict) -> str:
        """What is not finite after an epoch ("" when everything is)."""
        for k, v in self.model.state_dict().items():
            if v.is_floating_point() and not torch.isfinite(v).all():
                return f"values in {k}"
        for t, m in metrics.items():
            if not all(math.isfinite(x) for x in m.values()) or not math.isfinite(losses[t]):
                return f"{self.selection_split} metrics for {t}"
        return ""

    def _eval_forward(self, x: torch.Tensor) -> Iterator[tuple[slice, dict[str, torch.Tensor]]]:
        """The model's outputs on `x`, batch by batch: the one forward pass (autocast and memory layout
        included) that both the records' metrics and the stored predictions come from."""
        self.model.eval()
        for start in range(0, len(x), EVAL_BATCH):
            sl = slice(start, start + EVAL_BATCH)
            with self._autocast():
                out = self.model(self._inputs(x[sl]))
            yield sl, out  # outside autocast: the metrics and probabilities are computed in fp32

    @torch.no_grad()
    def evaluate(self, split: str | None = None) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
        """Metrics and losses per task on `split` ("test" or "validation"; default: where epochs are picked)."""
        x, targets = self._eval_sets[split or self.selection_split]
        acc = MetricAccumulator(self.config.tasks)
        for sl, out in self._eval_forward(x):
            acc.add(out, {t: v[sl] for t, v in targets.items()})
        return acc.result()

    @torch.no_grad()
    def test_outputs(self) -> dict[str, np.ndarray]:
        """Every task's probabilities (or value) on the test set, from the forward pass `evaluate`
        scores: predictions stored from these agree with the records' accuracies to the last digit."""
        parts: dict[str, list[np.ndarray]] = {t: [] for t in self.config.tasks}
        for _, out in self._eval_forward(self._test_x):
            for t in self.config.tasks:
                parts[t].append(probabilities(t, out[t].float()).cpu().numpy())
        return {t: np.concatenate(v) for t, v in parts.items()}

    def records(self) -> Iterator[dict]:
        cfg = self.config
        last_good = state_copy(self.model)
        for epoch in range(1, cfg.epochs + 1):
            t0 = time.perf_counter()
            lr = self.optimizer.param_groups[0]["lr"]
            self._epoch_threads = None
            train_loss = self._train_epoch(epoch)
            if train_loss is None:
                # Diverged or cancelled: go back to the end of the last complete epoch.
                self.model.load_state_dict(last_good)
                break
            train_s = time.perf_counter() - t0
            if self.scheduler is not None:
                self.scheduler.step()
            metrics, eval_loss = self.evaluate()
            bad = self._non_finite(metrics, eval_loss)
            if bad:
                # A finite training loss can still leave inf/NaN in BatchNorm statistics or weights.
                self.status = "diverged"
                self.reason = f"non-finite {bad} after epoch {epoch}; {DIVERGED_HINT}"
                self.model.load_state_dict(last_good)
                break
            seconds = time.perf_counter() - t0
            self.train_seconds += seconds
            last_good = state_copy(self.model)
            record = {
                "epoch": epoch,
                "train_loss": train_loss,
                "train_loss_total": self._objective
                if self.fast is None
                else sum(
                    cfg.weight(t) * v
                    for t, v in train_loss.items()  # the fast path: static weights only
                ),
                # Which digits `metrics` were scored on: the test set, or the held-out validation digits.
                "split": self.selection_split,
                "test_loss" if self.selection_split == "test" else "val_loss": eval_loss,
                "metrics": metrics,
                "avg_acc": average_accuracy(metrics),
                "seconds": seconds,
                "train_only_seconds": train_s,
                "lr": lr,
                "threads": torch.get_num_threads(),  # at the epoch's end (a worker shares the cores out)
                # The C++ loop: how many batches ran on each thread count it picked (ThreadPicker).
                "thread_batches": self._epoch_threads,
                "alphas": self.model.alphas(),
                "loss_weights": self.weighting.epoch_weights(),  # the mean of the weights this epoch used
                "gates": self._gate_record(),
                "conflict": self._conflict_record(),
            }
            score = selection_score(metrics)
            if score > self.best_score:
                self.best_score, self.best_epoch, self.best_record = score, epoch, record
                self.best_state = last_good
            self.history.append(record)
            yield record
        else:
            self.status = "finished"
        # The saved model is the best checkpoint (SPEC.md), never a diverged one.
        self.model.load_state_dict(self.best_state)
        if self.selection_split == "validation" and self.best_record is not None:
            self.test_result = self.evaluate("test")  # the one look at the test set, after picking

    def summary(self) -> dict:
        """The run in one dict. `best*` are the test set's numbers for the best epoch: with a validation
        split, scored once after picking on validation (whose own best is in `val_best*`)."""
        best = self.best_record or {}
        metrics = best.get("metrics", {})
        extra: dict = {"selected_on": self.selection_split}
        if self.selection_split == "validation":
            extra.update(val_best_metrics=metrics, val_best_avg=best.get("avg_acc"))
            metrics = self.test_result[0] if self.test_result else {}
        return extra | {
            "model": self.config.model,
            "tasks": list(self.config.tasks),
            "params": self.params,
            "status": self.status,
            "reason": self.reason,
            "train_seconds": self.train_seconds,
            "best_epoch": self.best_epoch,
            "best": {t: (m["acc"] if "acc" in m else m["mae"]) for t, m in metrics.items()},
            "best_metrics": metrics,
            "best_avg": average_accuracy(metrics) if metrics else None,
            "device": str(self.device),
            "precision": self.precision,
            "path": self.path,
            # the fast path's loop, "C++" or "Python"; on the CNNs "C++ max-pool" where pooling ran in C++
            "kernel": self.kernel,
            "data": self.data.source,
        }


def iter_train(config: TrainConfig, data: MTLData, stop: Callable[[], bool] | None = None) -> Iterator[dict]:
    """Records only, for callers that do not need the model afterwards."""
    yield from Training(config, data, stop).records()
