"""The image generator of data-free distillation (DAFL, Chen et al. 2019; their ``Generator``).

z (latent_dim) -> linear -> width x (s/4) x (s/4) -> BN -> up x2 -> conv3 width, BN, LeakyReLU
-> up x2 -> conv3 width/2, BN, LeakyReLU -> conv3 channels -> tanh -> BN (no affine).

The last, affine-free BatchNorm puts each channel of a batch at mean 0, std 1: the normalised
space kdrun's networks read (kdrun normalises every data set with its training statistics).
Sides not divisible by 4 are generated at the next multiple and resized.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Generator(nn.Module):
    def __init__(self, in_shape: tuple[int, int, int], latent_dim: int = 100, width: int = 128):
        super().__init__()
        if len(in_shape) != 3:
            raise ValueError(f"a generator makes images (C, H, W); got input shape {in_shape}")
        c, h, w = in_shape
        self.out_hw = (h, w)
        self.latent_dim = latent_dim
        self.init_hw = (-(-h // 4), -(-w // 4))
        self.width = width
        self.fc = nn.Linear(latent_dim, width * self.init_hw[0] * self.init_hw[1])
        self.bn0 = nn.BatchNorm2d(width)
        self.block1 = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1),
            nn.BatchNorm2d(width, eps=0.8),  # DAFL's BatchNorm2d(128, 0.8): eps=0.8
            nn.LeakyReLU(0.2, inplace=True),
        )
        self.block2 = nn.Sequential(
            nn.Conv2d(width, width // 2, 3, padding=1),
            nn.BatchNorm2d(width // 2, eps=0.8),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(width // 2, c, 3, padding=1),
            nn.Tanh(),
            nn.BatchNorm2d(c, affine=False),
        )

    def sample(self, n: int, gen: torch.Generator | None = None) -> torch.Tensor:
        """n latent vectors z ~ N(0, I) on the generator's device."""
        z = torch.randn(n, self.latent_dim, generator=gen)
        return z.to(self.fc.weight.device)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.fc(z).view(len(z), self.width, *self.init_hw)
        x = F.interpolate(self.bn0(x), scale_factor=2)
        x = F.interpolate(self.block1(x), scale_factor=2)
        x = self.block2(x)
        if tuple(x.shape[2:]) != self.out_hw:
            x = F.interpolate(x, size=self.out_hw, mode="bilinear", align_corners=False)
        return x
