"""Training as a generator: `Training(config, data).records()` yields one plain dict per epoch.

The library never prints; whoever drives the generator decides what a record is for (the worker
writes it to the run store, the CLI prints it, tests assert on it). How a batch becomes an update is
the run's step (`steps.py`); this module owns the epoch loop, evaluation and the records.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator

import numpy as np
import torch

from mtl_core.config import ConfigError, TrainConfig, weighting_fits
from mtl_core.data import MTLData, batch_indices
from mtl_core.metrics import MetricAccumulator, average_accuracy, mean_by_key, probabilities, selection_score, task_loss
from mtl_core.models import MultiTaskModel, build_model, count_parameters, get_model_spec
from mtl_core.tasks import make_targets
from mtl_core.training.steps import TrainStep, choose_step, split_shared
from mtl_core.weighting import build_weighting, split_like, task_gradient_rows

# Gradient-conflict probes per epoch: each costs one forward and one backward per task on one batch.
CONFLICT_PROBES = 4

EVAL_BATCH = 2048
DIVERGED_HINT = "kept the last good weights (try a smaller learning rate)"


def resolve_device(name: str, family: str = "cnn") -> torch.device:
    """ "auto": a CUDA GPU, where there is one, for the CNNs and LeNets; the CPU for the MLPs (`family` "mlp")
    everywhere. An MLP step is a few dozen tiny kernels, too small to keep a GPU busy: on an H200 machine
    (benchmarks/gpu_check.py) hard sharing took 0.63 ms a step on CUDA against 0.32 ms on that machine's
    CPU. "cuda" puts any model on the GPU."""
    if name == "auto":
        return torch.device("cuda" if family != "mlp" and torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for, but no CUDA GPU is available on this machine")
    return torch.device(name)


def state_copy(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def split_training_data(config: TrainConfig, data: MTLData) -> tuple[MTLData, tuple | None]:
    """The digits this run trains on, and its held-out validation digits (None without a split)."""
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
    if config.batch_size > data.n_train:
        raise ConfigError(f"batch size {config.batch_size} is larger than the {data.n_train:,} training digits")
    return data, val_data


def chunk_bounds(n: int, size: int, cuts: set[int]) -> list[tuple[int, int]]:
    """[begin, end) spans covering n batches, at most `size` long, each of `cuts` starting one."""
    if size == 1:
        return [(b, b + 1) for b in range(n)]
    spans, b = [], 0
    while b < n:
        end = min([n, b + size, *(q for q in cuts if q > b)])
        spans.append((b, end))
        b = end
    return spans


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
        self.config, self.stop = config, stop
        self.conflict_probes = conflict_probes  # per epoch; 0: no gradient-conflict record
        self._conflict: list[tuple[dict[str, float], dict[str, float], dict[str, float]]] = []
        self.device = resolve_device(config.device, get_model_spec(config.model).family)
        self.data, val_data = split_training_data(config, data)
        # Where the best epoch is picked: held-out training digits, or (the reference studies' choice,
        # val_split 0) the test set itself, which then flatters the result a little.
        self.selection_split = "validation" if val_data is not None else "test"
        self.test_result: tuple[dict, dict] | None = None  # with a validation split: the test set, scored once
        self.model = self._build_model()
        self.params = count_parameters(self.model)
        self.weighting = build_weighting(config.loss_weighting, {t: config.weight(t) for t in config.tasks})
        self.weighting = self.weighting.to(self.device)
        self._shared = self._shared_parameters()
        self._load_tensors(val_data)
        self.step: TrainStep = choose_step(
            config, self.model, self.weighting, self._train_x, self._train_t, self.channels_last, pick_threads
        )
        # What the run's record and details show: which step trained it, why not a faster one, which loop.
        self.path, self.path_note, self.kernel = self.step.path, self.step.reason, self.step.kernel
        self.precision = self.step.precision
        self.scheduler = (
            torch.optim.lr_scheduler.StepLR(self.optimizer, config.step_size, config.gamma)
            if config.scheduler == "step"
            else None
        )
        self._start_bookkeeping()

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.step.optimizer

    @property
    def channels_last(self) -> bool:
        return self.config.channels_last and get_model_spec(self.config.model).family != "mlp"

    def _build_model(self) -> MultiTaskModel:
        torch.manual_seed(self.config.seed)
        model = build_model(self.config.model, self.config.tasks, alpha_init=self.config.alpha_init).to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def _shared_parameters(self) -> list[torch.nn.Parameter]:
        """The shared parameters the conflict probes look at, and their names; a weighting method that
        balances gradients on them is refused for a model without any."""
        shared, _ = split_shared(self.model)
        names = {id(p): n for n, p in self.model.named_parameters()}
        self._shared_names = [names[id(p)] for p in shared]
        if self.weighting.needs_representation and not weighting_fits(type(self.weighting), self.config.model):
            raise ConfigError(
                f"{self.weighting.title} balances the tasks' gradients on the output of one shared trunk, and "
                f"{self.config.model} has none: choose hard sharing, the CNN or LeNet"
            )
        if self.weighting.needs_shared and not shared:
            raise ConfigError(
                f"{self.weighting.title} balances the tasks' gradients on shared parameters, and "
                f"{self.config.model} shares none: choose hard sharing, cross-stitch or the CNN"
            )
        return shared

    def _load_tensors(self, val_data: tuple | None) -> None:
        """The images and each task's targets on the run's device: training, test and validation digits."""
        tasks, data, device = self.config.tasks, self.data, self.device
        self._train_x = data.train_x.to(device)
        self._test_x = data.test_x.to(device)
        self._train_t = {k: v.to(device) for k, v in make_targets(data.train_y, tasks).items()}
        self._test_t = {k: v.to(device) for k, v in make_targets(data.test_y, tasks).items()}
        self._eval_sets = {"test": (self._test_x, self._test_t)}
        if val_data is not None:
            val_x, val_y = val_data
            self._eval_sets["validation"] = (
                val_x.to(device),
                {k: v.to(device) for k, v in make_targets(val_y, tasks).items()},
            )

    def _start_bookkeeping(self) -> None:
        self.generator = torch.Generator().manual_seed(self.config.seed)
        self.status = "running"
        self.reason = ""
        self.stopped_early = 0  # the epoch `patience` ended the run after (0: it did not)
        self.best_epoch = 0
        self.best_score = -math.inf
        self.best_record: dict | None = None
        self.best_state = state_copy(self.model)
        self.train_seconds = 0.0
        self.history: list[dict] = []
        # How far the running epoch is, for whoever watches (the worker's heartbeat reports it).
        self.batch_done, self.batches_per_epoch = 0, 1

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
        xb = self.step.inputs(self._train_x.index_select(0, idx.to(self._train_x.device)))
        with torch.enable_grad(), self.step.autocast():
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
                    with self.step.autocast():
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
        weights = gate_weights(self.step.inputs(self._test_x[:EVAL_BATCH]))
        return {t: w.float().mean(0).tolist() for t, w in weights.items()}

    def _train_epoch(self, epoch: int) -> tuple[dict[str, float], float] | None:
        """One pass over the training set: (mean loss per task, mean objective), or None when stopped
        (cancelled or diverged). The step runs `step.chunk` batches at a time (one, or the C++ loop's chunk);
        between two chunks this loop checks Stop, reports progress and runs a conflict probe before its batch."""
        step, stop = self.step, self.stop
        batches = self._epoch_batches()
        probes = self._probe_batches()
        step.begin_epoch()
        for begin, end in chunk_bounds(len(batches), step.chunk, probes):
            self.batch_done = begin
            if stop is not None and stop():  # (a worker's stop check also sets the threads it may use)
                return self._cancelled(epoch)
            if begin in probes:
                self._probe_conflict(batches[begin])
            bad = step.run(batches, begin, end)
            if bad is not None:
                return self._diverged(bad[1], epoch, bad[0])
        return step.end_epoch(sum(len(idx) for idx in batches))

    def _epoch_batches(self) -> list[torch.Tensor]:
        """This epoch's index batches (cut at `max_batches`); records how many, for `epoch_done`."""
        batches = list(batch_indices(self.data.n_train, self.config.batch_size, self.generator))
        if self.config.max_batches:
            batches = batches[: self.config.max_batches]
        self.batches_per_epoch = len(batches)
        return batches

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
            with self.step.autocast():
                out = self.model(self.step.inputs(x[sl]))
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
            epoch_losses = self._train_epoch(epoch)
            if epoch_losses is None:
                # Diverged or cancelled: go back to the end of the last complete epoch.
                self.model.load_state_dict(last_good)
                break
            train_s = time.perf_counter() - t0
            train_loss, objective = epoch_losses
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
                "train_loss_total": objective,  # what was minimised, learned weights included
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
                "thread_batches": self.step.thread_batches,
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
            if cfg.patience and epoch < cfg.epochs and epoch - self.best_epoch >= cfg.patience:
                self.status, self.stopped_early = "finished", epoch
                break
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
            "path_note": self.path_note,  # why not a faster step ("" when nothing was refused)
            "data": self.data.source,
        }


def iter_train(config: TrainConfig, data: MTLData, stop: Callable[[], bool] | None = None) -> Iterator[dict]:
    """Records only, for callers that do not need the model afterwards."""
    yield from Training(config, data, stop).records()
