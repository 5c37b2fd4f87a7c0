"""Loss weighting: how the task losses of a batch become one update. Separate from the sharing scheme
(the model), as in LibMTL's weighting/ vs architecture/ split.

One seam: a method sees the task losses and, where it needs them, the task gradients on the model's
shared parameters (`MultiTaskModel.shared_parameters`); it owns the backward (fills every `.grad`) and
reports the task weights it used, which the training loop averages per epoch into the record. Each
method is one small class in WEIGHTINGS: `base` holds the seam, `loss` the methods that only scale
losses, `gradient` those that read task gradients. The gradient-aggregation family (PCGrad, MGDA, CAGrad, IMTL-G,
Aligned-MTL, UPGrad) is torchjd's, the maintained library for them, not written here.

The config's static weights (the tutorial's x10 on `value`) scale each task's loss before any method.
"""

from __future__ import annotations

from mtl_core.weighting.base import Weighting, split_like, task_gradient_rows
from mtl_core.weighting.gradient import FAMO, MGDAUB, GradNorm, aggregator_method, from_torchjd
from mtl_core.weighting.loss import DWA, StaticWeighting, UncertaintyWeighting

WEIGHTINGS: dict[str, type[Weighting]] = {
    "static": StaticWeighting,
    "uncertainty": UncertaintyWeighting,
    "dwa": DWA,
    "gradnorm": GradNorm,
    "famo": FAMO,
    "pcgrad": aggregator_method("PCGradWeighting", "PCGrad (Yu et al. 2020), torchjd", from_torchjd("PCGrad")),
    "mgda": aggregator_method("MGDAWeighting", "MGDA (Sener and Koltun 2018), torchjd", from_torchjd("MGDA")),
    "mgda_ub": MGDAUB,
    "cagrad": aggregator_method(
        "CAGradWeighting", "CAGrad, c = 0.4 (Liu et al. 2021), torchjd", from_torchjd("CAGrad", c=0.4)
    ),
    "imtl_g": aggregator_method("IMTLGWeighting", "IMTL-G (Liu et al. 2021), torchjd", from_torchjd("IMTLG")),
    "aligned_mtl": aggregator_method(
        "AlignedMTLWeighting", "Aligned-MTL (Senushkin et al. 2023), torchjd", from_torchjd("AlignedMTL")
    ),
    "upgrad": aggregator_method("UPGradWeighting", "UPGrad (Quinton and Rey 2024), torchjd", from_torchjd("UPGrad")),
}


def build_weighting(name: str, weights: dict[str, float]) -> Weighting:
    try:
        return WEIGHTINGS[name](weights)
    except KeyError:
        raise ValueError(f"unknown loss weighting {name!r}; valid: {', '.join(WEIGHTINGS)}") from None


__all__ = [
    "DWA",
    "FAMO",
    "WEIGHTINGS",
    "GradNorm",
    "MGDAUB",
    "StaticWeighting",
    "UncertaintyWeighting",
    "Weighting",
    "build_weighting",
    "split_like",
    "task_gradient_rows",
]
