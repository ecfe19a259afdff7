"""The small nets of the dataset-distillation and data-free literature.

- ``convnet3``: the ConvNet of DC / DSA / DM (Zhao et al., VICO-UoE/DatasetCondensation
  ``networks.py``): ``depth`` x [conv 3x3 ``width``, instance norm, ReLU, avg-pool 2x2] + linear.
  Instance norm is ``GroupNorm(width, width, affine=True)`` as there: per-sample statistics, so
  a batch of 10 synthetic images trains like a batch of 10 000. Paper width 128; kdrun keeps it
  (``width: 128``) and CPU recipes lower it.
- ``lenet5`` / ``lenet5_half``: LeNet-5 (6, 16 conv filters; 120, 84 hidden) and its half-width
  variant (3, 8; 60, 42) of the data-free papers (DAFL, ZSKD: MNIST LeNet-5 -> LeNet-5-half).
"""

from __future__ import annotations

import torch
from torch import nn

from kdrun.models.registry import register_model


class ConvNet(nn.Module):
    """[conv, instance norm, ReLU, avg-pool] x depth, then one linear layer on the flat map."""

    def __init__(self, in_shape: tuple[int, int, int], num_classes: int, width: int, depth: int):
        super().__init__()
        c, h, w = in_shape
        blocks = []
        for i in range(depth):
            block: list[nn.Module] = [
                nn.Conv2d(c if i == 0 else width, width, 3, padding=1),
                nn.GroupNorm(width, width, affine=True),  # instance norm, as in DC
                nn.ReLU(inplace=True),
            ]
            if min(h, w) >= 2:  # 8x8 digits keep a 1x1 map after three pools
                block.append(nn.AvgPool2d(2))
                h, w = h // 2, w // 2
            blocks.append(nn.Sequential(*block))
        self.features = nn.Sequential(*blocks)
        self.fc = nn.Linear(width * h * w, num_classes)
        self.kd_stages = [f"features.{i}" for i in range(depth)]
        self.kd_head = "fc"

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The flattened feature map: what distribution matching compares."""
        return self.features(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.embed(x))


@register_model("convnet3", inputs="images")
def convnet3(cfg, in_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """DC's ConvNet; ``width`` (default 128 in conf/student/convnet3.yaml), ``depth`` (0 = 3)."""
    return ConvNet(in_shape, num_classes, cfg.width, cfg.depth or 3)


class LeNet5(nn.Module):
    """conv5 (pad 2) - ReLU - maxpool - conv5 - ReLU - maxpool - fc - fc - fc.

    On 28x28 this is the classic 16x5x5 map; on inputs too small for an unpadded second conv
    (8x8 digits) that conv is padded too, and the flat size is measured, not assumed."""

    def __init__(self, in_shape: tuple[int, int, int], num_classes: int, scale: float = 1.0):
        super().__init__()
        c, h, w = in_shape
        c1, c2, f1, f2 = (max(1, round(n * scale)) for n in (6, 16, 120, 84))
        pad2 = 0 if min(h, w) >= 12 else 2
        self.features = nn.Sequential(
            nn.Sequential(nn.Conv2d(c, c1, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2)),
            nn.Sequential(
                nn.Conv2d(c1, c2, 5, padding=pad2), nn.ReLU(inplace=True), nn.MaxPool2d(2)
            ),
        )
        with torch.no_grad():
            flat = self.features(torch.zeros(1, c, h, w)).numel()
        self.fc1 = nn.Sequential(nn.Linear(flat, f1), nn.ReLU(inplace=True))
        self.fc2 = nn.Sequential(nn.Linear(f1, f2), nn.ReLU(inplace=True))
        self.fc = nn.Linear(f2, num_classes)
        self.kd_stages = ["features.0", "features.1", "fc1", "fc2"]
        self.kd_head = "fc"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.fc2(self.fc1(self.features(x).flatten(1))))


@register_model("lenet5", inputs="images")
def lenet5(cfg, in_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    return LeNet5(in_shape, num_classes)


@register_model("lenet5_half", inputs="images")
def lenet5_half(cfg, in_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """Half the filters and hidden units of LeNet-5 (ZSKD's student)."""
    return LeNet5(in_shape, num_classes, scale=0.5)
