"""The CIFAR model families of the standard distillation benchmark (CRD/RepDistiller pairs).

- CIFAR ResNets (He et al. 2016, section 4.2): a 3x3 stem, three stages of basic blocks at
  strides 1/2/2, depth = 6n + 2. ``resnetN`` uses widths 16/16/32/64; the "x4" variants
  (RepDistiller's resnet8x4, resnet32x4) use 32/64/128/256.
- Wide ResNets (Zagoruyko & Komodakis 2016): pre-activation blocks, depth = 6n + 4, widths
  16/16k/32k/64k for widening factor k.
- VGG with batch norm (Simonyan & Zisserman 2015) in RepDistiller's CIFAR layout: five conv
  blocks separated by max-pooling, global average pooling, one linear classifier.

The registered name fixes the architecture; ``depth`` (0 = as named) and ``widen_factor``
(a multiplier of the named widths, 1 = as named) adjust it. Every model ends in adaptive
average pooling, so any input from 8x8 to 32x32 with 1 or 3 channels works.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from kdrun.errors import ConfigError
from kdrun.models.registry import register_model


@dataclass(frozen=True)
class CifarArch:
    family: str  # resnet | wrn | vgg
    depth: int
    widths: tuple[int, ...]  # resnet: stem + 3 stages; wrn: widen factor k as (k,); vgg: 5 blocks


VGG_LAYOUTS: dict[int, tuple[int, ...]] = {  # convs per block; depth = convs + 3 classifier-ish
    8: (1, 1, 1, 1, 1),
    11: (1, 1, 2, 2, 2),
    13: (2, 2, 2, 2, 2),
    16: (2, 2, 3, 3, 3),
    19: (2, 2, 4, 4, 4),
}

CIFAR_ARCHS: dict[str, CifarArch] = {
    **{
        f"resnet{d}": CifarArch("resnet", d, (16, 16, 32, 64)) for d in (8, 14, 20, 32, 44, 56, 110)
    },
    "resnet8x4": CifarArch("resnet", 8, (32, 64, 128, 256)),
    "resnet32x4": CifarArch("resnet", 32, (32, 64, 128, 256)),
    "wrn_16_2": CifarArch("wrn", 16, (2,)),
    "wrn_40_1": CifarArch("wrn", 40, (1,)),
    "wrn_40_2": CifarArch("wrn", 40, (2,)),
    **{f"vgg{d}": CifarArch("vgg", d, (64, 128, 256, 512, 512)) for d in (8, 11, 13)},
}


def valid_depths(family: str) -> str:
    return {
        "resnet": "6n+2 (8, 14, 20, 32, 44, 56, 110)",
        "wrn": "6n+4 (16, 28, 40)",
        "vgg": ", ".join(map(str, VGG_LAYOUTS)),
    }[family]


def depth_ok(family: str, depth: int) -> bool:
    if family == "resnet":
        return depth >= 8 and (depth - 2) % 6 == 0
    if family == "wrn":
        return depth >= 10 and (depth - 4) % 6 == 0
    return depth in VGG_LAYOUTS


def snap_depth(family: str, depth: float) -> int:
    """The valid depth of ``family`` nearest to ``depth`` (ties go to the smaller)."""
    cands = list(VGG_LAYOUTS) if family == "vgg" else range(4, 500)
    return min((d for d in cands if depth_ok(family, d)), key=lambda d: (abs(d - depth), d))


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def _init(model: nn.Module) -> None:
    # He initialisation for convolutions, unit BN scale: the CIFAR ResNet/WRN papers' choice.
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class BasicBlock(nn.Module):
    """Post-activation residual block: relu(bn(conv(relu(bn(conv x)))) + shortcut x)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1, self.bn1 = conv3x3(cin, cout, stride), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = conv3x3(cout, cout), nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(
        self, in_ch: int, depth: int, widths: tuple[int, ...], num_classes: int, dropout: float
    ):
        super().__init__()
        n = (depth - 2) // 6
        stem, *stages = widths
        self.conv1, self.bn1 = conv3x3(in_ch, stem), nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        cin = stem
        for i, (w, stride) in enumerate(zip(stages, (1, 2, 2), strict=True)):
            blocks = [
                BasicBlock(cin if j == 0 else w, w, stride if j == 0 else 1) for j in range(n)
            ]
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            cin = w
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(cin, num_classes)
        self.kd_stages = ["layer1", "layer2", "layer3"]
        self.kd_head = "fc"
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.drop(self.pool(x).flatten(1)))


class WideBlock(nn.Module):
    """Pre-activation block of Wide ResNets: conv(relu(bn(conv(relu(bn x))))) + shortcut."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), conv3x3(cin, cout, stride)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), conv3x3(cout, cout)
        self.relu = nn.ReLU(inplace=True)
        self.equal = cin == cout and stride == 1
        self.shortcut = None if self.equal else nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = self.relu(self.bn1(x))
        out = self.conv2(self.relu(self.bn2(self.conv1(act))))
        # a projection shortcut sees the activated input, as in the WRN reference design
        return out + (x if self.shortcut is None else self.shortcut(act))


class WideResNet(nn.Module):
    def __init__(self, in_ch: int, depth: int, k: int, num_classes: int, dropout: float):
        super().__init__()
        n = (depth - 4) // 6
        widths = (16 * k, 32 * k, 64 * k)
        self.conv1 = conv3x3(in_ch, 16)
        cin = 16
        for i, (w, stride) in enumerate(zip(widths, (1, 2, 2), strict=True)):
            blocks = [WideBlock(cin if j == 0 else w, w, stride if j == 0 else 1) for j in range(n)]
            self.add_module(f"block{i + 1}", nn.Sequential(*blocks))
            cin = w
        self.bn, self.relu = nn.BatchNorm2d(cin), nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(cin, num_classes)
        self.kd_stages = ["block1", "block2", "block3"]
        self.kd_head = "fc"
        _init(self)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        x = self.relu(self.bn(x))
        return self.fc(self.drop(self.pool(x).flatten(1)))


class CifarVGG(nn.Module):
    """Five blocks of conv3x3-BN-ReLU; max-pool after the first four while the map is >= 2x2."""

    def __init__(
        self,
        in_ch: int,
        depth: int,
        widths: tuple[int, ...],
        num_classes: int,
        dropout: float,
        hw: int,
    ):
        super().__init__()
        cin, size = in_ch, hw
        for i, (convs, w) in enumerate(zip(VGG_LAYOUTS[depth], widths, strict=True)):
            layers: list[nn.Module] = []
            for _ in range(convs):
                layers += [conv3x3(cin, w), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
                cin = w
            if i < 4 and size >= 2:  # an 8x8 input keeps a 1x1 map instead of vanishing
                layers.append(nn.MaxPool2d(2))
                size //= 2
            self.add_module(f"block{i}", nn.Sequential(*layers))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(cin, num_classes)
        self.kd_stages = [f"block{i}" for i in range(5)]
        self.kd_head = "fc"
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in self.kd_stages:
            x = getattr(self, name)(x)
        return self.fc(self.drop(self.pool(x).flatten(1)))


def arch_of(cfg) -> CifarArch:
    """The architecture a config names, after its ``depth`` / ``widen_factor`` adjustments."""
    base = CIFAR_ARCHS[cfg.name]
    depth = cfg.depth or base.depth
    if not depth_ok(base.family, depth):
        raise ConfigError(
            f"{cfg.name}: depth={depth} is not a valid {base.family} depth; use "
            f"{valid_depths(base.family)}"
        )
    if cfg.widen_factor < 1:
        raise ConfigError(f"{cfg.name}: widen_factor must be >= 1 (got {cfg.widen_factor})")
    return CifarArch(base.family, depth, tuple(w * cfg.widen_factor for w in base.widths))


def _builder(name: str):
    def build(cfg, in_shape, num_classes):
        c, h, w = in_shape
        a = arch_of(cfg)
        if a.family == "resnet":
            return CifarResNet(c, a.depth, a.widths, num_classes, cfg.dropout)
        if a.family == "wrn":
            return WideResNet(c, a.depth, a.widths[0], num_classes, cfg.dropout)
        return CifarVGG(c, a.depth, a.widths, num_classes, cfg.dropout, min(h, w))

    build.__name__ = name
    build.__doc__ = f"CIFAR {name} ({CIFAR_ARCHS[name].family} family)."
    return build


for _name in CIFAR_ARCHS:
    register_model(_name, inputs="images")(_builder(_name))
