"""FitNets hint regression (Romero et al., ICLR 2015, arXiv 1412.6550).

A learned regressor maps the student's guided layer onto the teacher's hint layer and the
student is trained to match it:  beta * mean((r(f_s) - f_t)^2)  (mean over all elements, as in
RepDistiller/mdistiller's HintLoss), trained jointly with CE in one stage (the paper's
two-stage schedule is not reproduced; that is how RepDistiller's FitNet baseline runs too).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from kdrun.errors import ConfigError
from kdrun.methods.base import register_method
from kdrun.methods.feature_base import (
    FeatureDistiller,
    FeatureOptions,
    check_layer_options,
    stage_pair,
)
from kdrun.models.features import Taps


def hint_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over every element (batch, channels, positions)."""
    return F.mse_loss(pred.float(), target.float())


class HintAdapter(nn.Module):
    """Student feature -> teacher feature shape.

    Both spatial: 1x1 conv + BN to the teacher's channels, then resize to its H x W (average
    pool when larger, bilinear when smaller). Otherwise (an MLP on either side): flatten and
    a linear map to the teacher's feature size, reshaped to the teacher's shape.
    """

    def __init__(self, s_shape: tuple[int, ...], t_shape: tuple[int, ...]):
        super().__init__()
        self.t_shape = tuple(t_shape)
        self.spatial = len(s_shape) == 3 and len(t_shape) == 3
        if self.spatial:
            self.conv = nn.Conv2d(s_shape[0], t_shape[0], 1, bias=False)
            self.bn = nn.BatchNorm2d(t_shape[0])
        else:
            self.linear = nn.Linear(math.prod(s_shape), math.prod(t_shape))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        if not self.spatial:
            return self.linear(f.flatten(1)).view(-1, *self.t_shape)
        f = self.bn(self.conv(f))
        size = self.t_shape[1:]
        if tuple(f.shape[-2:]) == size:
            return f
        if f.shape[-2] >= size[0] and f.shape[-1] >= size[1]:
            return F.adaptive_avg_pool2d(f, size)
        return F.interpolate(f, size=size, mode="bilinear", align_corners=False)


class ConvReg(nn.Module):
    """RepDistiller's FitNet regressor (models/util.py ConvReg): conv + BN + ReLU.

    Student H twice the teacher's: 3x3 conv, stride 2; half: 4x4 transposed conv, stride 2;
    otherwise larger or equal: a valid conv of kernel (1 + H_s - H_t, 1 + W_s - W_t). A
    student map smaller than the teacher's (other than half) has no ConvReg.
    """

    def __init__(self, s_shape: tuple[int, ...], t_shape: tuple[int, ...]):
        super().__init__()
        if len(s_shape) != 3 or len(t_shape) != 3:
            raise ConfigError(
                f"method.regressor=convreg needs spatial (C, H, W) maps on both sides (got "
                f"{tuple(s_shape)} and {tuple(t_shape)}); use method.regressor=conv1x1"
            )
        (sc, sh, sw), (tc, th, tw) = s_shape, t_shape
        if sh == 2 * th:
            self.conv: nn.Module = nn.Conv2d(sc, tc, kernel_size=3, stride=2, padding=1)
        elif 2 * sh == th:
            self.conv = nn.ConvTranspose2d(sc, tc, kernel_size=4, stride=2, padding=1)
        elif sh >= th and sw >= tw:
            self.conv = nn.Conv2d(sc, tc, kernel_size=(1 + sh - th, 1 + sw - tw))
        else:
            raise ConfigError(
                f"method.regressor=convreg cannot map a {sh}x{sw} student map onto a {th}x{tw} "
                f"teacher map (RepDistiller's ConvReg has no such case); pick other layers "
                f"(method.student_layer / method.teacher_layer) or method.regressor=conv1x1"
            )
        self.bn = nn.BatchNorm2d(tc)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(f)))


REGRESSORS = {"conv1x1": HintAdapter, "convreg": ConvReg}


@dataclass
class FitNetOptions(FeatureOptions):
    name: str = "fitnet"
    beta: float = 100.0  # RepDistiller -b 100 / mdistiller FITNET.LOSS.FEAT_WEIGHT
    student_layer: str = "mid"  # guided layer: a module name, a kd_stages index, or mid
    teacher_layer: str = "mid"  # hint layer: the paper uses the middle of the teacher
    regressor: str = "conv1x1"  # conv1x1 (1x1 conv + BN + resize) | convreg (RepDistiller's)


@register_method("fitnet")
class FitNet(FeatureDistiller):
    Options = FitNetOptions

    def __init__(self, student, teacher, opts, in_shape):
        super().__init__(student, teacher, opts)
        s_name, t_name, s, t = stage_pair(student, teacher, opts, in_shape)
        self.student_stages, self.teacher_stages = [s_name], [t_name]
        self.adapter = REGRESSORS[opts.regressor](
            tuple(s.stages[s_name].shape[1:]), tuple(t.stages[t_name].shape[1:])
        )

    @classmethod
    def check_options(cls, opts, cfg) -> None:
        if opts.regressor not in REGRESSORS:
            raise ConfigError(
                f"unknown method.regressor '{opts.regressor}'; choose one of: "
                f"{', '.join(REGRESSORS)}"
            )
        check_layer_options(opts, cfg)

    @classmethod
    def create(cls, cfg, ctx):
        opts = cls.options(cfg.method)
        return cls(ctx.new_student(), ctx.teacher(), opts, cls.in_shape(ctx))

    def feature_losses(self, s: Taps, t: Taps, y, idx):
        (f_s,), (f_t,) = s.stages.values(), t.stages.values()
        return {"hint": self.opts.beta * hint_loss(self.adapter(f_s.float()), f_t)}
