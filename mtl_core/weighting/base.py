"""The seam every loss weighting plugs into (`Weighting`) and the task-gradient helpers they share."""

from __future__ import annotations

import torch
from torch import nn


def task_grads(losses: list[torch.Tensor], shared: list[nn.Parameter]) -> list[list[torch.Tensor]]:
    """Each loss's gradient on each shared parameter, in fp32 (one backward per task; under autocast too)."""
    out = []
    for loss in losses:
        grads = torch.autograd.grad(loss, shared, retain_graph=True, allow_unused=True)
        out.append([(g if g is not None else torch.zeros_like(p)).float() for g, p in zip(grads, shared)])
    return out


def task_gradient_rows(losses: list[torch.Tensor], shared: list[nn.Parameter]) -> list[torch.Tensor]:
    """Each loss's gradient on the shared parameters, flattened: one (n_shared,) row per task."""
    return [torch.cat([g.reshape(-1) for g in grads]) for grads in task_grads(losses, shared)]


def split_like(flat: torch.Tensor, params: list[nn.Parameter]) -> list[torch.Tensor]:
    """A flat vector over `params` (a row of `task_gradient_rows`) cut back into one tensor per parameter."""
    parts, start = [], 0
    for p in params:
        parts.append(flat[start : start + p.numel()].view_as(p).to(p.dtype))
        start += p.numel()
    return parts


def set_grads(params: list[nn.Parameter], flat: torch.Tensor) -> None:
    for p, g in zip(params, split_like(flat, params)):
        p.grad = g.clone() if p.grad is None else p.grad + g


class Weighting(nn.Module):
    """The interface. `backward` fills the gradients for one batch and returns the objective (a detached
    scalar for the record); `after_step` runs after the optimiser step; `end_epoch` gets the epoch's
    mean task losses. `epoch_weights` is the mean of the weights used since it was last called."""

    title = ""
    needs_shared = False  # it works on the shared parameters: a model without any (STL) is refused
    # It reads the shared trunk's output (`MultiTaskModel.representation`): `backward` then gets it as
    # `representation=`, and only models with one shared trunk can take it.
    needs_representation = False
    needs_losses_after_step = False  # it wants the batch's losses again after the step (FAMO)

    def __init__(self, weights: dict[str, float]):
        super().__init__()
        self.fixed = dict(weights)
        self._used: dict[str, float] = {t: 0.0 for t in self.fixed}
        self._n = 0

    def backward(
        self, losses: dict[str, torch.Tensor], shared: list[nn.Parameter], others: list[nn.Parameter]
    ) -> torch.Tensor:
        raise NotImplementedError

    def after_step(self, losses_after: dict[str, torch.Tensor] | None = None) -> None:
        pass

    def end_epoch(self, mean_losses: dict[str, float]) -> None:
        pass

    def _record(self, weights: dict[str, float]) -> None:
        for t, w in weights.items():
            self._used[t] = self._used.get(t, 0.0) + float(w)
        self._n += 1

    def epoch_weights(self) -> dict[str, float]:
        """The weights used this epoch, averaged over its steps (the current ones before any step)."""
        if not self._n:
            return self.current()
        out = {t: v / self._n for t, v in self._used.items()}
        self._used, self._n = {t: 0.0 for t in self.fixed}, 0
        return out

    def current(self) -> dict[str, float]:
        return dict(self.fixed)


class LossWeighting(Weighting):
    """Methods that only need the losses: total = sum_t w_t * L_t (+ whatever `extra` adds)."""

    def weights_now(self) -> dict[str, torch.Tensor | float]:
        return dict(self.fixed)

    def extra(self) -> torch.Tensor | float:
        return 0.0

    def _objective(self, losses: dict[str, torch.Tensor], weights: dict) -> torch.Tensor:
        return sum(weights[t] * loss for t, loss in losses.items() if t in weights) + self.extra()

    def forward(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        """The objective itself (what `backward` differentiates)."""
        return self._objective(losses, self.weights_now())

    def backward(self, losses, shared, others):
        weights = self.weights_now()  # once a step: the objective and the record use the same weights
        total = self._objective(losses, weights)
        total.backward()
        self._record({t: float(torch.as_tensor(weights.get(t, 0.0)).detach()) for t in losses})
        return total.detach()
