"""The CNNs' first block in training, convolution (one input channel) then BatchNorm, as one convolution.

BatchNorm in training mode normalises each channel of y = conv(x) by the batch's mean and variance. With
one input channel, y at every position is w . p + b for that position's 3x3 patch p, so the mean and the
variance over the batch follow from the patches' first and second moments alone:
mean = w . E[p] + b and var = w^T Cov(p) w. BN(conv(x)) is then conv(x) with weights w * s and bias
(b - mean) * s + beta, s = gamma / sqrt(var + eps): one convolution, and BatchNorm's two passes over
the largest activation in the network (128 x 32 x 28 x 28 a batch) are gone, forward and backward.
Autograd differentiates through mean and var, so the gradients are BatchNorm's own; the running
statistics are updated as BatchNorm would (unbiased variance, its momentum).

The moments are per image and never change, so `patch_moments` computes them once for the training
set (about a second for 60,000 digits) and a batch sums its rows. `tests/test_models.py` checks the
result, the gradients and the running statistics against Conv2d followed by BatchNorm2d.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def patch_moments(images: torch.Tensor, conv: nn.Conv2d, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image, over every position `conv` reads (its zero padding included): the sum of the patches
    (N, k) and the sum of their outer products (N, k, k), k = kernel height x width, in float32 (or the
    images' own float64)."""
    sums, grams = [], []
    with torch.no_grad():
        for start in range(0, len(images), chunk):
            part = images[start : start + chunk]
            cols = F.unfold(
                part.to(torch.promote_types(part.dtype, torch.float32)), conv.kernel_size, padding=conv.padding
            )
            sums.append(cols.sum(2))
            grams.append(torch.bmm(cols, cols.transpose(1, 2)))
    return torch.cat(sums), torch.cat(grams)


def folded_conv_bn(
    conv: nn.Conv2d, bn: nn.BatchNorm2d, x: torch.Tensor, sums: torch.Tensor, grams: torch.Tensor
) -> torch.Tensor:
    """bn(conv(x)) in training mode, for a one-channel `x` whose images' `patch_moments` rows are
    `sums` and `grams`. Updates bn's running statistics as its own forward would."""
    n = x.shape[0] * x.shape[2] * x.shape[3]  # values per channel that BatchNorm would average
    k = sums.shape[1]
    with torch.autocast(x.device.type, enabled=False):  # the statistics in full precision (float64: tiny)
        mean_patch = sums.double().sum(0) / n
        cov = grams.double().sum(0) / n - torch.outer(mean_patch, mean_patch)
        w = conv.weight.reshape(conv.out_channels, k).double()
        mean = w @ mean_patch + conv.bias.double()
        var = ((w @ cov) * w).sum(1).clamp_min(0.0)  # biased, as BatchNorm normalises
        scale = bn.weight.double() * torch.rsqrt(var + bn.eps)
        weight = (conv.weight * scale.to(conv.weight.dtype).view(-1, 1, 1, 1)).to(conv.weight.dtype)
        bias = ((conv.bias.double() - mean) * scale + bn.bias.double()).to(conv.bias.dtype)
        if bn.track_running_stats:
            with torch.no_grad():
                bn.num_batches_tracked += 1
                momentum = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
                bn.running_mean.mul_(1 - momentum).add_(mean.to(bn.running_mean.dtype), alpha=momentum)
                unbiased = var * n / max(n - 1, 1)
                bn.running_var.mul_(1 - momentum).add_(unbiased.to(bn.running_var.dtype), alpha=momentum)
    return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)


def can_fold(conv: nn.Module, bn: nn.Module) -> bool:
    """Whether `conv` then `bn` is the block `folded_conv_bn` computes."""
    return (
        isinstance(conv, nn.Conv2d)
        and isinstance(bn, nn.BatchNorm2d)
        and conv.in_channels == 1
        and conv.groups == 1
        and conv.bias is not None
        and bn.affine
        and conv.padding_mode == "zeros"
    )
