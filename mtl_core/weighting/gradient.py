"""Methods that read the task gradients on the shared parameters: GradNorm (Chen et al. 2018), FAMO
(Liu et al. 2023), the gradient aggregators of torchjd (PCGrad, MGDA, CAGrad, IMTL-G, Aligned-MTL, UPGrad),
and MGDA-UB (Sener & Koltun 2018), which reads them on the shared representation instead."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from mtl_core.weighting.base import Weighting, set_grads, task_gradient_rows, task_grads


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
        set_grads(shared, sum(wi * r for wi, r in zip(wd, rows)))
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
        for p, rows in zip(shared, zip(*task_grads(scaled, shared))):
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


def aggregator_method(name: str, title: str, factory: Callable[[], object]) -> type[_Aggregation]:
    return type(name, (_Aggregation,), {"title": title, "make": staticmethod(factory), "__doc__": title})


def from_torchjd(cls_name: str, **kwargs):
    def make():
        import torchjd.aggregation as agg

        return getattr(agg, cls_name)(**kwargs)

    return make


def min_norm_weights(rows: torch.Tensor) -> torch.Tensor:
    """The convex weights w (w >= 0, sum 1) whose combination sum_t w_t g_t of the rows g_t has the least
    norm: MGDA's subproblem. Two rows: the closed form of Sener & Koltun's Algorithm 1, with an even split
    where every split is as short (the rows are equal). More rows: torchjd's Frank-Wolfe solver on the
    Gramian (their Algorithm 2)."""
    rows = rows.double()
    if len(rows) == 1:
        return torch.ones(1, dtype=rows.dtype)
    if len(rows) == 2:
        g1, g2 = rows
        gap = (g1 - g2).dot(g1 - g2)
        if gap <= 1e-12 * max(float(g1.dot(g1) + g2.dot(g2)), 1e-300):
            return torch.full((2,), 0.5, dtype=rows.dtype)
        gamma = ((g2 - g1).dot(g2) / gap).clamp(0.0, 1.0)
        return torch.stack([gamma, 1 - gamma])
    from torchjd.aggregation import MGDAWeighting

    return MGDAWeighting()(rows @ rows.T)


class MGDAUB(Weighting):
    """MGDA-UB (Sener & Koltun, NeurIPS 2018): MGDA's min-norm task weights, found on each task loss's
    gradient with respect to the shared representation z (the trunk's output for the batch) rather than
    the shared parameters: the paper's upper bound, one backward per task through the heads only. The
    step is then one backward of sum_t w_t L_t. Their code's optional gradient normalisation stays off,
    as in the paper."""

    title = "MGDA-UB (Sener and Koltun 2018)"
    needs_shared = True
    needs_representation = True

    def backward(self, losses, shared, others, representation=None):
        if representation is None:
            raise ValueError("MGDA-UB needs the model's shared representation (a model with one shared trunk)")
        tasks = list(losses)
        scaled = [self.fixed[t] * losses[t] for t in tasks]
        rows = [torch.autograd.grad(s, representation, retain_graph=True)[0].float().reshape(-1) for s in scaled]
        weights = min_norm_weights(torch.stack(rows)).tolist()
        total = sum(w * s for w, s in zip(weights, scaled))
        total.backward()
        self._record({t: w * self.fixed[t] for t, w in zip(tasks, weights)})
        return total.detach()

    def current(self) -> dict[str, float]:
        return {}
