"""Per-task losses and test metrics, chosen from the task kind and the output's shape."""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from mtl_core.tasks import VALUE_SCALE, get_task


def task_loss(task: str, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy for class logits, BCE for a single binary logit, MSE for regression."""
    kind = get_task(task).kind
    if kind == "regression":
        return F.mse_loss(output, target)
    if output.dim() == 1:
        return F.binary_cross_entropy_with_logits(output, target.to(output.dtype))
    return F.cross_entropy(output, target)


def probabilities(task: str, output: torch.Tensor) -> torch.Tensor:
    """Class probabilities (B, C) for classification; the value in [0, 1] (B,) for regression."""
    kind = get_task(task).kind
    if kind == "regression":
        return output.float()
    if output.dim() == 1:
        p = torch.sigmoid(output.float())
        return torch.stack([1 - p, p], dim=1)
    return torch.softmax(output.float(), dim=1)


def predicted_class(task: str, output: torch.Tensor) -> torch.Tensor:
    return (output > 0).long() if output.dim() == 1 else output.argmax(dim=1)


class MetricAccumulator:
    """Sums over test batches; `result()` gives accuracy, or MAE/RMSE (in [0, 1] and in digit units)."""

    def __init__(self, tasks: tuple[str, ...]):
        self.tasks = tasks
        self.n = 0
        self.loss = {t: 0.0 for t in tasks}
        self.correct = {t: 0 for t in tasks}
        self.abs_err = {t: 0.0 for t in tasks}
        self.sq_err = {t: 0.0 for t in tasks}

    def add(self, outputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> None:
        b = len(next(iter(targets.values())))
        self.n += b
        for t in self.tasks:
            out, y = outputs[t].float(), targets[t]
            self.loss[t] += task_loss(t, out, y).item() * b
            if get_task(t).kind == "regression":
                err = out - y
                self.abs_err[t] += err.abs().sum().item()
                self.sq_err[t] += (err * err).sum().item()
            else:
                self.correct[t] += (predicted_class(t, out) == y).sum().item()

    def result(self) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
        metrics, losses = {}, {}
        for t in self.tasks:
            losses[t] = self.loss[t] / self.n
            if get_task(t).kind == "regression":
                mae, rmse = self.abs_err[t] / self.n, (self.sq_err[t] / self.n) ** 0.5
                metrics[t] = {
                    "mae": mae,
                    "rmse": rmse,
                    "mae_digits": mae * VALUE_SCALE,
                    "rmse_digits": rmse * VALUE_SCALE,
                }
            else:
                metrics[t] = {"acc": self.correct[t] / self.n}
        return metrics, losses


def average_accuracy(metrics: dict[str, dict[str, float]]) -> float | None:
    accs = [m["acc"] for m in metrics.values() if "acc" in m]
    return sum(accs) / len(accs) if accs else None


def selection_score(metrics: dict[str, dict[str, float]]) -> float:
    """What "best epoch" maximises: mean accuracy over classification tasks (SPEC.md), or minus the
    mean MAE when the run has only the regression task."""
    avg = average_accuracy(metrics)
    if avg is not None:
        return avg
    maes = [m["mae"] for m in metrics.values()]
    return -sum(maes) / len(maes)


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n - 1); std is None for fewer than two values."""
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def mean_std_text(mean: float, std: float | None, digits: int = 2) -> str:
    """The text "mean ± std" as tables show it; the mean alone where there is no spread (one value)."""
    return f"{mean:.{digits}f}" + ("" if std is None else f" ± {std:.{digits}f}")


def mean_by_key(dicts: list[dict[str, float]] | tuple[dict[str, float], ...]) -> dict[str, float]:
    """The mean of each key over dicts that share their keys (those of the first); {} for none."""
    if not dicts:
        return {}
    return {k: sum(d[k] for d in dicts) / len(dicts) for k in dicts[0]}
