"""Loss weighting: how the task losses of a batch become one update. Separate from the sharing scheme
(the model), as in LibMTL's weighting/ vs architecture/ split.

One seam: a method sees the task losses and, where it needs them, the task gradients on the model's
shared parameters (`MultiTaskModel.shared_parameters`); it owns the backward (fills every `.grad`) and
reports the task weights it used, which the training loop averages per epoch into the record. Each
method is one small class in WEIGHTINGS. The gradient-aggregation family (PCGrad, MGDA, CAGrad, IMTL-G,
Aligned-MTL, UPGrad) is torchjd's, the maintained library for them, not written here.

The config's static weights (the tutorial's x10 on `value`) scale each task's loss before any method.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn


def _task_grads(losses: list[torch.Tensor], shared: list[nn.Parameter]) -> list[list[torch.Tensor]]:
    """Each loss's gradient on each shared parameter, in fp32 (one backward per task; under autocast too)."""
    out = []
    for loss in losses:
        grads = torch.autograd.grad(loss, shared, retain_graph=True, allow_unused=True)
        out.append([(g if g is not None else torch.zeros_like(p)).float() for g, p in zip(grads, shared)])
    return out


def task_gradient_rows(losses: list[torch.Tensor], shared: list[nn.Parameter]) -> list[torch.Tensor]:
    """Each loss's gradient on the shared parameters, flattened: one (n_shared,) row per task."""
    return [torch.cat([g.reshape(-1) for g in grads]) for grads in _task_grads(losses, shared)]


def split_like(flat: torch.Tensor, params: list[nn.Parameter]) -> list[torch.Tensor]:
    """A flat vector over `params` (a row of `task_gradient_rows`) cut back into one tensor per parameter."""
    parts, start = [], 0
    for p in params:
        parts.append(flat[start : start + p.numel()].view_as(p).to(p.dtype))
        start += p.numel()
    return parts


def _set_grads(params: list[nn.Parameter], flat: torch.Tensor) -> None:
    for p, g in zip(params, split_like(flat, params)):
        p.grad = g.clone() if p.grad is None else p.grad + g


class Weighting(nn.Module):
    """The interface. `backward` fills the gradients for one batch and returns the objective (a detached
    scalar for the record); `after_step` runs after the optimiser step; `end_epoch` gets the epoch's
    mean task losses. `epoch_weights` is the mean of the weights used since it was last called."""

    title = ""
    needs_shared = False  # it works on the shared parameters: a model without any (STL) is refused
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


class _LossWeighting(Weighting):
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


class StaticWeighting(_LossWeighting):
    """Equal or manual weights, fixed for the whole run (the config's loss weights; 1 when not given)."""

    title = "Static (equal or manual weights)"


class UncertaintyWeighting(_LossWeighting):
    """Homoscedastic uncertainty weighting (Kendall, Gal and Cipolla, CVPR 2018): one learned
    s_t = log sigma_t^2 per task, total = sum_t 0.5 * (w_t * exp(-s_t) * L_t + s_t). The config's static
    weights still scale each task; s_t starts at 0, so the first step equals static weighting x 0.5.

    Each s_t belongs to its task by name, whatever order the losses come in. A task with static
    weight 0 is left out: with nothing to balance, its 0.5 * s_t alone would fall without bound."""

    title = "Uncertainty (Kendall et al. 2018)"

    def __init__(self, weights: dict[str, float]):
        super().__init__(weights)
        self.log_vars = nn.ParameterDict({t: nn.Parameter(torch.zeros(())) for t, w in self.fixed.items() if w > 0})

    def weights_now(self):
        return {t: 0.5 * self.fixed[t] * torch.exp(-s) for t, s in self.log_vars.items()}

    def extra(self):
        return sum(0.5 * s for s in self.log_vars.values()) if len(self.log_vars) else 0.0

    def current(self) -> dict[str, float]:
        """The effective weight of each task's loss now (0 for a task left out)."""
        return {
            t: 0.5 * w * math.exp(-float(self.log_vars[t].detach())) if t in self.log_vars else 0.0
            for t, w in self.fixed.items()
        }


class DWA(_LossWeighting):
    """Dynamic Weight Average (Liu, Johns and Davison, CVPR 2019), T = 2: a task whose loss fell slowly
    over the last epoch weighs more in the next, w_t = K exp(r_t / T) / sum_j exp(r_j / T) with
    r_t = L_t(e-1) / L_t(e-2); weights 1 for the first two epochs."""

    title = "Dynamic Weight Average (Liu et al. 2019)"
    temperature = 2.0

    def __init__(self, weights: dict[str, float]):
        super().__init__(weights)
        self._history: list[dict[str, float]] = []
        self._dynamic = {t: 1.0 for t in self.fixed}

    def end_epoch(self, mean_losses: dict[str, float]) -> None:
        self._history = [*self._history[-1:], dict(mean_losses)]
        if len(self._history) == 2:
            before, last = self._history
            ratios = {t: last[t] / max(before[t], 1e-12) for t in self.fixed}
            z = sum(math.exp(r / self.temperature) for r in ratios.values())
            self._dynamic = {t: len(ratios) * math.exp(r / self.temperature) / z for t, r in ratios.items()}

    def weights_now(self):
        return {t: self.fixed[t] * self._dynamic[t] for t in self.fixed}

    def current(self) -> dict[str, float]:
        return {t: float(w) for t, w in self.weights_now().items()}


class GradNorm(Weighting):
    """GradNorm (Chen et al., ICML 2018), alpha = 1.5: learned task weights w_t, trained so that each
    task's weighted gradient norm on the shared parameters G_t = w_t |grad L_t| approaches
    mean(G) * r_t^alpha, where r_t is the task's loss ratio L_t / L_t(0) relative to the mean ratio (a
    task that trains slowly gets a larger gradient). After each step the weights are rescaled to sum to
    the number of tasks. Norms are taken over all shared parameters (the paper uses the last shared
    layer, a cost saving these small models do not need)."""

    title = "GradNorm (Chen et al. 2018)"
    needs_shared = True
    alpha = 1.5

    def __init__(self, weights: dict[str, float]):
        super().__init__(weights)
        self.w = nn.ParameterDict({t: nn.Parameter(torch.ones(())) for t in self.fixed})
        self._initial: dict[str, float] = {}

    def backward(self, losses, shared, others):
        tasks = list(losses)
        scaled = [self.fixed[t] * losses[t] for t in tasks]
        rows = task_gradient_rows(scaled, shared)
        if not self._initial:
            self._initial = {t: max(float(s.detach()), 1e-12) for t, s in zip(tasks, scaled)}
        w = torch.stack([self.w[t] for t in tasks])
        norms = torch.stack([r.norm() for r in rows]).detach()
        g = w * norms  # G_t, differentiable in the weights only
        ratios = torch.tensor([float(s.detach()) / self._initial[t] for t, s in zip(tasks, scaled)], device=g.device)
        target = (g.mean() * (ratios / ratios.mean()) ** self.alpha).detach()
        grad_w = torch.autograd.grad((g - target).abs().sum(), w)[0]
        for t, gw in zip(tasks, grad_w):
            self.w[t].grad = gw.detach().clone()
        wd = w.detach()
        _set_grads(shared, sum(wi * r for wi, r in zip(wd, rows)))
        total = sum(wi * s for wi, s in zip(wd, scaled))
        if others:
            torch.autograd.backward(total, inputs=others)
        self._record({t: float(wi) * self.fixed[t] for t, wi in zip(tasks, wd)})
        return total.detach()

    def after_step(self, losses_after=None) -> None:
        with torch.no_grad():
            total = sum(p.clamp_(min=1e-4) for p in self.w.values())
            for p in self.w.values():
                p.mul_(len(self.w) / total)

    def current(self) -> dict[str, float]:
        return {t: float(p.detach()) for t, p in self.w.items()}


class FAMO(Weighting):
    """FAMO (Liu et al., NeurIPS 2023): the step minimises sum_t z_t log L_t with z = softmax(xi), so
    every task's loss falls at about the same rate; after the step, xi moves by how much each loss did
    fall on the same batch (its own Adam, lr 0.025, decay 0.001, as in the paper's code). The weight
    reported for a task is the one its loss effectively gets, z_t / (c L_t) with c = sum_j z_j / L_j."""

    title = "FAMO (Liu et al. 2023)"
    needs_losses_after_step = True
    eps = 1e-8

    def __init__(self, weights: dict[str, float]):
        super().__init__(weights)
        self.tasks = list(self.fixed)
        # Not an nn.Parameter: the network's optimiser must not touch it; FAMO updates it itself.
        self.logits = torch.zeros(len(self.tasks), requires_grad=True)
        self._opt = torch.optim.Adam([self.logits], lr=0.025, weight_decay=1e-3)
        self._before: torch.Tensor | None = None

    def backward(self, losses, shared, others):
        scaled = torch.stack([self.fixed[t] * losses[t] for t in self.tasks])
        z = torch.softmax(self.logits.detach(), 0).to(scaled.device)
        d = scaled + self.eps
        c = (z / d).sum().detach()
        objective = (z * d.log() / c).sum()
        objective.backward()
        self._before = scaled.detach()
        effective = (z / (c * d.detach())).tolist()
        self._record({t: float(e) * self.fixed[t] for t, e in zip(self.tasks, effective)})
        return objective.detach()

    def after_step(self, losses_after=None) -> None:
        if losses_after is None or self._before is None:
            return
        after = torch.stack([self.fixed[t] * losses_after[t].detach() for t in self.tasks])
        delta = ((self._before + self.eps).log() - (after + self.eps).log()).cpu()
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(torch.softmax(self.logits, 0), self.logits, grad_outputs=delta)
        self.logits.grad = grad
        self._opt.step()
        self._opt.zero_grad(set_to_none=True)

    def current(self) -> dict[str, float]:
        z = torch.softmax(self.logits.detach(), 0).tolist()
        return {t: v * self.fixed[t] for t, v in zip(self.tasks, z)}


class _Aggregation(Weighting):
    """A torchjd aggregator on the Jacobian of the task losses w.r.t. the shared parameters; the
    task-specific parameters (heads) get their own loss's gradient as usual. Reports the weights the
    aggregator put on each task's gradient, where it works by weighting them (all six here do)."""

    needs_shared = True
    make: Callable[[], object]

    def backward(self, losses, shared, others):
        from torchjd.autojac import jac_to_grad

        tasks = list(losses)
        scaled = [self.fixed[t] * losses[t] for t in tasks]
        # The Jacobian by one plain backward per task (torchjd's own `backward` trips over bf16 autocast),
        # handed to torchjd in its `.jac` fields; `jac_to_grad` aggregates it into `.grad`.
        for p, rows in zip(shared, zip(*_task_grads(scaled, shared))):
            p.jac = torch.stack(rows)
        weights = jac_to_grad(shared, self.make())
        total = sum(scaled)
        if others:
            torch.autograd.backward(total, inputs=others)
        if weights is not None:
            w = weights.detach().reshape(-1).tolist()
            self._record({t: wi * self.fixed[t] for t, wi in zip(tasks, w)})  # the weight on the task's own loss
            return sum(wi * s.detach() for wi, s in zip(w, scaled))
        return total.detach()

    def current(self) -> dict[str, float]:
        return {}


def _aggregation(name: str, title: str, factory: Callable[[], object]) -> type[_Aggregation]:
    return type(name, (_Aggregation,), {"title": title, "make": staticmethod(factory), "__doc__": title})


def _torchjd(cls_name: str, **kwargs):
    def make():
        import torchjd.aggregation as agg

        return getattr(agg, cls_name)(**kwargs)

    return make


WEIGHTINGS: dict[str, type[Weighting]] = {
    "static": StaticWeighting,
    "uncertainty": UncertaintyWeighting,
    "dwa": DWA,
    "gradnorm": GradNorm,
    "famo": FAMO,
    "pcgrad": _aggregation("PCGradWeighting", "PCGrad (Yu et al. 2020), torchjd", _torchjd("PCGrad")),
    "mgda": _aggregation("MGDAWeighting", "MGDA (Sener and Koltun 2018), torchjd", _torchjd("MGDA")),
    "cagrad": _aggregation("CAGradWeighting", "CAGrad, c = 0.4 (Liu et al. 2021), torchjd", _torchjd("CAGrad", c=0.4)),
    "imtl_g": _aggregation("IMTLGWeighting", "IMTL-G (Liu et al. 2021), torchjd", _torchjd("IMTLG")),
    "aligned_mtl": _aggregation(
        "AlignedMTLWeighting", "Aligned-MTL (Senushkin et al. 2023), torchjd", _torchjd("AlignedMTL")
    ),
    "upgrad": _aggregation("UPGradWeighting", "UPGrad (Quinton and Rey 2024), torchjd", _torchjd("UPGrad")),
}


def build_weighting(name: str, weights: dict[str, float]) -> Weighting:
    try:
        return WEIGHTINGS[name](weights)
    except KeyError:
        raise ValueError(f"unknown loss weighting {name!r}; valid: {', '.join(WEIGHTINGS)}") from None
