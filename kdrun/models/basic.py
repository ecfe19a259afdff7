"""The basic models: an MLP, a small CNN and a ResNet-18 with a small-image stem."""

from __future__ import annotations

import torch
from torch import nn

from kdrun.models.registry import register_model


class MLP(nn.Module):
    def __init__(
        self,
        in_features: int,
        hidden: list[int],
        num_classes: int,
        dropout: float,
        input_dropout: float = 0.0,
    ):
        super().__init__()
        # parameter-free, so the state dict is the same with or without it
        self.input_drop = nn.Dropout(input_dropout) if input_dropout > 0 else nn.Identity()
        layers: list[nn.Module] = []
        width = in_features
        for i, h in enumerate(hidden):
            block = [nn.Linear(width, h), nn.ReLU(inplace=True)]
            if dropout > 0:
                block.append(nn.Dropout(dropout))
            layers.append(nn.Sequential(*block))
            self.add_module(f"layer{i + 1}", layers[-1])
            width = h
        self.fc = nn.Linear(width, num_classes)
        self.kd_stages = [f"layer{i + 1}" for i in range(len(hidden))]
        self.kd_head = "fc"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_drop(x.flatten(1))
        for name in self.kd_stages:
            x = getattr(self, name)(x)
        return self.fc(x)


@register_model("mlp", inputs="images")
def mlp(cfg, in_shape, num_classes):
    c, h, w = in_shape
    return MLP(c * h * w, list(cfg.hidden), num_classes, cfg.dropout, cfg.input_dropout)


class SmallCNN(nn.Module):
    """Two 3x3 conv layers per stage with BN, max-pool between stages, global average pool."""

    def __init__(self, in_ch: int, channels: list[int], num_classes: int, dropout: float, hw: int):
        super().__init__()
        stages = []
        ch, size = in_ch, hw
        for out in channels:
            block: list[nn.Module] = [
                nn.Conv2d(ch, out, 3, padding=1, bias=False),
                nn.BatchNorm2d(out),
                nn.ReLU(inplace=True),
                nn.Conv2d(out, out, 3, padding=1, bias=False),
                nn.BatchNorm2d(out),
                nn.ReLU(inplace=True),
            ]
            if size >= 4:  # keep at least 2x2 spatial so 8x8 inputs survive several stages
                block.append(nn.MaxPool2d(2))
                size //= 2
            stages.append(nn.Sequential(*block))
            ch = out
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(ch, num_classes)
        self.kd_stages = [f"stages.{i}" for i in range(len(channels))]
        self.kd_head = "fc"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(self.pool(self.stages(x)).flatten(1)))


@register_model("cnn", inputs="images")
def cnn(cfg, in_shape, num_classes):
    c, h, w = in_shape
    return SmallCNN(c, list(cfg.channels), num_classes, cfg.dropout, min(h, w))


@register_model("resnet18", inputs="images")
def resnet18(cfg, in_shape, num_classes):
    """torchvision's ResNet-18 with a small-image stem (3x3 conv, stride 1, no max-pool)."""
    from torchvision.models import resnet18 as tv_resnet18
    from torchvision.models.resnet import BasicBlock, ResNet

    c = in_shape[0]
    if cfg.width == 64:
        model = tv_resnet18(weights=None, num_classes=num_classes)
    else:  # a narrower/wider ResNet-18: same topology, base width cfg.width
        model = ResNet(BasicBlock, [2, 2, 2, 2], num_classes=num_classes)
        _rewidth(model, cfg.width, num_classes)
    model.conv1 = nn.Conv2d(c, model.conv1.out_channels, 3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    if cfg.dropout > 0:
        model.fc = nn.Sequential(nn.Dropout(cfg.dropout), model.fc)
        model.kd_head = "fc.1"
    else:
        model.kd_head = "fc"
    model.kd_stages = ["layer1", "layer2", "layer3", "layer4"]
    return model


def _rewidth(model: nn.Module, width: int, num_classes: int) -> None:
    """Rebuild torchvision's ResNet-18 layers at another base width."""
    from torchvision.models.resnet import BasicBlock

    model.inplanes = width
    model.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
    model.bn1 = nn.BatchNorm2d(width)
    model.layer1 = model._make_layer(BasicBlock, width, 2)
    model.layer2 = model._make_layer(BasicBlock, width * 2, 2, stride=2)
    model.layer3 = model._make_layer(BasicBlock, width * 4, 2, stride=2)
    model.layer4 = model._make_layer(BasicBlock, width * 8, 2, stride=2)
    model.fc = nn.Linear(width * 8, num_classes)
