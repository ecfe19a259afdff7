"""Differentiable Siamese augmentation (DSA; Zhao & Bilen, ICML 2021).

Every op is differentiable with respect to the images, so gradients reach the synthetic pixels
through the augmentation. "Siamese": during matching, the real and the synthetic batch of a
class get the *same* transformation (one parameter draw, shared by every image of both
batches), so the two sides stay comparable. When an evaluation net trains on a small set,
each image gets its own draw instead.

Parameters and the one-op-per-call mode ("S") follow ``ParamDiffAug`` / ``DiffAugment`` of
VICO-UoE/DatasetCondensation ``utils.py``: flip p=0.5, scale in [1/1.2, 1.2], rotation within
±15°, translation of ±12.5% of the side, cutout of half the side, brightness ±0.5,
saturation x[0, 2], contrast x[0.5, 1.5].
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

AugOp = Callable[[torch.Tensor, torch.Generator, int], torch.Tensor]


def _uniform(gen: torch.Generator, n: int, lo: float, hi: float, x: torch.Tensor) -> torch.Tensor:
    return (torch.rand(n, generator=gen) * (hi - lo) + lo).to(x.device, x.dtype)


def _affine(x: torch.Tensor, theta: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    theta = theta.expand(x.shape[0], 2, 3) if theta.shape[0] == 1 else theta
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode=mode, padding_mode="zeros", align_corners=False)


def rand_scale(x: torch.Tensor, gen: torch.Generator, n: int, ratio: float = 1.2) -> torch.Tensor:
    sx, sy = _uniform(gen, n, 1 / ratio, ratio, x), _uniform(gen, n, 1 / ratio, ratio, x)
    zero = torch.zeros_like(sx)
    theta = torch.stack([torch.stack([sx, zero, zero], -1), torch.stack([zero, sy, zero], -1)], 1)
    return _affine(x, theta)


def rand_rotate(x: torch.Tensor, gen: torch.Generator, n: int, degrees: float = 15.0):
    a = _uniform(gen, n, -degrees, degrees, x) * (math.pi / 180)
    cos, sin, zero = torch.cos(a), torch.sin(a), torch.zeros_like(a)
    theta = torch.stack([torch.stack([cos, -sin, zero], -1), torch.stack([sin, cos, zero], -1)], 1)
    return _affine(x, theta)


def rand_flip(x: torch.Tensor, gen: torch.Generator, n: int, p: float = 0.5) -> torch.Tensor:
    flip = (torch.rand(n, generator=gen) < p).to(x.device)[:, None, None, None]
    return torch.where(flip, x.flip(3), x)


def rand_color(x: torch.Tensor, gen: torch.Generator, n: int) -> torch.Tensor:
    """Brightness + (u - 0.5), saturation x 2u around the pixel's channel mean, contrast
    x (u + 0.5) around the image mean: DSA's 'color' group, applied in that order."""
    shape = (n, 1, 1, 1)
    x = x + (_uniform(gen, n, 0, 1, x) - 0.5).view(shape)
    m = x.mean(1, keepdim=True)
    x = (x - m) * (_uniform(gen, n, 0, 2, x)).view(shape) + m
    m = x.mean((1, 2, 3), keepdim=True)
    return (x - m) * (_uniform(gen, n, 0.5, 1.5, x)).view(shape) + m


def rand_crop(x: torch.Tensor, gen: torch.Generator, n: int, ratio: float = 0.125):
    """Translate by a whole number of pixels (up to ratio x side), zero fill."""
    h, w = x.shape[2:]
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    ty = torch.randint(-sh, sh + 1, (n,), generator=gen).to(x.device, x.dtype)
    tx = torch.randint(-sw, sw + 1, (n,), generator=gen).to(x.device, x.dtype)
    one, zero = torch.ones_like(tx), torch.zeros_like(tx)
    # normalised coordinates: a shift of k pixels is 2k/side; the sample grid moves the other way
    theta = torch.stack(
        [torch.stack([one, zero, -2 * tx / w], -1), torch.stack([zero, one, -2 * ty / h], -1)], 1
    )
    return _affine(x, theta, mode="nearest")


def rand_cutout(x: torch.Tensor, gen: torch.Generator, n: int, ratio: float = 0.5):
    """Zero a square of ratio x side centred at a random pixel (clipped at the border)."""
    h, w = x.shape[2:]
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    cy = torch.randint(0, h, (n,), generator=gen).to(x.device)
    cx = torch.randint(0, w, (n,), generator=gen).to(x.device)
    ys = torch.arange(h, device=x.device)[None, :]
    xs = torch.arange(w, device=x.device)[None, :]
    in_y = (ys >= (cy - ch // 2)[:, None]) & (ys < (cy - ch // 2 + ch)[:, None])
    in_x = (xs >= (cx - cw // 2)[:, None]) & (xs < (cx - cw // 2 + cw)[:, None])
    keep = ~(in_y[:, :, None] & in_x[:, None, :])
    return x * keep[:, None].to(x.dtype)


AUGMENTS: dict[str, AugOp] = {
    "color": rand_color,
    "crop": rand_crop,
    "cutout": rand_cutout,
    "flip": rand_flip,
    "scale": rand_scale,
    "rotate": rand_rotate,
}


def parse_strategy(strategy: str) -> list[str]:
    """'color_crop_cutout' -> ['color', 'crop', 'cutout']; '' or 'none' -> []."""
    if strategy in ("", "none", "None"):
        return []
    ops = strategy.split("_")
    bad = [o for o in ops if o not in AUGMENTS]
    if bad:
        raise ValueError(f"unknown DSA op(s) {bad}; known: {', '.join(AUGMENTS)}")
    return ops


def dsa(x: torch.Tensor, ops: list[str], gen: torch.Generator, siamese: bool) -> torch.Tensor:
    """Apply one op drawn from ``ops`` (DSA mode 'S'). ``siamese``: one parameter draw for the
    whole batch; else one per image. The same generator state gives the same transform, which
    is how a real and a synthetic batch are augmented alike."""
    if not ops:
        return x
    op = ops[int(torch.randint(len(ops), (1,), generator=gen))]
    n = 1 if siamese else x.shape[0]
    out = AUGMENTS[op](x, gen, n)
    return out.contiguous()
