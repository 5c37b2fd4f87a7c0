"""MultiMNIST by the recipe of Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization"
(NeurIPS 2018), as their public loader builds it: every image gets one partner drawn from the same
split; on a 36x36 zero canvas the image sits at rows and columns 0-27 and its partner at 6-33, where
they overlap the brighter pixel wins, and the canvas is shrunk to 28x28 by nearest neighbour. The tasks
are the left (upper) digit and the right (lower) one.

Two things are fixed here that their loader leaves to chance: the partners come from a seeded
generator (so every server builds the same set), and the shrinking samples each output pixel at its
centre, as PIL's NEAREST (which their `scipy.misc.imresize` called) does.
"""

from __future__ import annotations

import torch

CANVAS = 36
SIDE = 28
OFFSET = 6  # the right digit starts 6 pixels right of and below the left one
PARTNER_SEED = {"train": 20_180_612, "test": 20_180_613}  # fixed: one MultiMNIST for every server
CHUNK = 8192  # images overlaid at once (a 36x36 canvas each), so the build stays small in memory


def partners(n: int, split: str) -> torch.Tensor:
    """The partner of each of `n` images of a split: a uniform draw from the same split, seeded."""
    return torch.randint(0, n, (n,), generator=torch.Generator().manual_seed(PARTNER_SEED[split]))


# Output pixel i samples canvas pixel floor((i + 0.5) * 36 / 28): the nearest one to its centre.
_SAMPLE = ((torch.arange(SIDE, dtype=torch.float64) + 0.5) * CANVAS / SIDE).floor().long()


def overlay(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """Two batches of (N, 28, 28) uint8 digits as one batch of (N, 28, 28) MultiMNIST images."""
    if left.shape != right.shape or left.shape[1:] != (SIDE, SIDE):
        shapes = f"{tuple(left.shape)} and {tuple(right.shape)}"
        raise ValueError(f"overlay takes two (N, {SIDE}, {SIDE}) batches, not {shapes}")
    out = torch.empty_like(left)
    for start in range(0, len(left), CHUNK):
        upper, lower = left[start : start + CHUNK], right[start : start + CHUNK]
        canvas = torch.zeros((len(upper), CANVAS, CANVAS), dtype=left.dtype)
        canvas[:, :SIDE, :SIDE] = upper
        below = canvas[:, OFFSET : OFFSET + SIDE, OFFSET : OFFSET + SIDE]
        canvas[:, OFFSET : OFFSET + SIDE, OFFSET : OFFSET + SIDE] = torch.maximum(below, lower)
        out[start : start + CHUNK] = canvas[:, _SAMPLE][:, :, _SAMPLE]
    return out


def build(images: torch.Tensor, digits: torch.Tensor, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One split of MultiMNIST from one split of MNIST ((N, 28, 28) uint8 images, (N,) digits): the
    images, and (N, 2) labels, the left digit and the right one."""
    other = partners(len(images), split)
    return overlay(images, images[other]), torch.stack([digits, digits[other]], dim=1)
