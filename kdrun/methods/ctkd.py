"""Curriculum temperature KD (Li et al., AAAI 2023, arXiv 2211.16231).

The temperature is learned, adversarially: a temperature module's output passes a gradient
reversal layer (identity forward, gradient times -lambda backward), so the student descends
the distillation loss while the temperature ascends it, making the task harder. lambda follows
a cosine curriculum from 0 (easy) up to ``lambda_max`` over ``curriculum`` epochs,

    lambda(e) = lambda_max * (1 - cos(pi * min(e, curriculum) / curriculum)) / 2   (e 1-based)
    T         = t_min + t_range * sigmoid(theta)

where theta is one learned scalar (``mode=global``, init 1, as the authors' Global_T) or, per
sample, the output of a small MLP on the detached student and teacher logits
(``mode=instance``). The wrapped loss is KD's (``base=kd``: alpha * T^2 * KL_T + (1 - alpha) *
CE, top-level alpha) or DKD's (``base=dkd``: CE + T^2 * (dkd_alpha * TCKD + dkd_beta * NCKD)),
each sample at its own T. The learned T (mean over the epoch's batches) and lambda are logged
per epoch as ``T`` and ``ctkd_lambda`` in history.csv.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kdrun.methods.base import Distiller, MethodOptions, epoch_steps, register_method
from kdrun.methods.dkd import dkd_per_sample
from kdrun.methods.feature_base import check
from kdrun.methods.losses import hard_ce

BASES = ("kd", "dkd")
MODES = ("global", "instance")


class _ReverseGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, lam: torch.Tensor | float) -> torch.Tensor:
        ctx.lam = lam
        return x.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.lam * grad, None


def reverse_grad(x: torch.Tensor, lam: torch.Tensor | float) -> torch.Tensor:
    """Identity forward; the gradient is multiplied by -lam on the way back (Ganin 2015)."""
    return _ReverseGrad.apply(x, lam)


def cosine_lambda(epoch: int, curriculum: int, lambda_max: float) -> float:
    """The reversal weight at 1-based ``epoch``: 0 rising to lambda_max at ``curriculum``."""
    if curriculum <= 0:
        return lambda_max
    e = min(max(epoch, 0), curriculum)
    return lambda_max * (1.0 - math.cos(math.pi * e / curriculum)) / 2.0


def kd_per_sample(s: torch.Tensor, t: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
    """T_i^2 * KL(p_t^{T_i} || p_s^{T_i}) per sample; ``T`` is (B, 1)."""
    log_p_s = F.log_softmax(s.float() / T, dim=1)
    log_p_t = F.log_softmax(t.float() / T, dim=1)
    return (log_p_t.exp() * (log_p_t - log_p_s)).sum(1) * T.squeeze(1) ** 2


@dataclass
class CTKDOptions(MethodOptions):
    name: str = "ctkd"
    base: str = "kd"  # kd | dkd: the loss whose temperature is learned
    mode: str = "global"  # global | instance
    t_min: float = 1.0  # CTKD train_student.py --t_start 1
    t_range: float = 20.0  # --t_end 20: T = t_start + t_end * sigmoid(theta)
    lambda_max: float = 1.0  # run_cifar_distill.sh --decay_max 0 --decay_min -1: |lambda| <= 1
    curriculum: int = 10  # --decay_loops 10 (epochs); clamped to the student's epochs
    hidden: int = 64  # mode=instance: width of the temperature MLP (kdrun's choice)
    dkd_alpha: float = 1.0  # base=dkd: TCKD weight (run_cifar_distill.sh --dkd_alpha 1)
    dkd_beta: float = 2.0  # base=dkd: NCKD weight (--dkd_beta 2 for res56/res20)


class TemperatureModule(nn.Module):
    """theta, reversed-gradient, mapped to T = t_min + t_range * sigmoid(theta): (B, 1)."""

    def __init__(self, opts: CTKDOptions, num_classes: int):
        super().__init__()
        self.opts = opts
        if opts.mode == "global":
            self.theta = nn.Parameter(torch.ones(1))  # the authors' Global_T init
        else:
            self.mlp = nn.Sequential(
                nn.Linear(2 * num_classes, opts.hidden), nn.ReLU(), nn.Linear(opts.hidden, 1)
            )

    def forward(self, s: torch.Tensor, t: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        if self.opts.mode == "global":
            theta = self.theta.expand(len(s), 1)
        else:  # detached: the temperature must not steer the student's logits directly
            theta = self.mlp(torch.cat([s.detach().float(), t.detach().float()], 1))
        theta = reverse_grad(theta, lam)
        return self.opts.t_min + self.opts.t_range * torch.sigmoid(theta)


@register_method("ctkd")
class CTKD(Distiller):
    """Cacheable: the temperature module sees logits only."""

    Options = CTKDOptions

    def __init__(
        self,
        student,
        teacher,
        opts: CTKDOptions,
        alpha: float,
        num_classes: int,
        steps_per_epoch: int,
        epochs: int,
    ):
        super().__init__(student, teacher)
        self.opts, self.alpha = opts, alpha
        self.temperature = TemperatureModule(opts, num_classes)
        self.steps_per_epoch = max(1, steps_per_epoch)
        # CTKD ramps over 10 of 240 epochs; a kdrun recipe may be shorter than that
        self.curriculum = min(opts.curriculum, epochs)
        # in the state dict: a resumed run continues the same curriculum
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.register_buffer("t_sum", torch.zeros(()))  # this epoch's mean T, for the log
        self.register_buffer("t_count", torch.zeros(()))
        self.last_T: float | None = None  # the last epoch's mean learned T

    @classmethod
    def check_config(cls, cfg) -> None:
        o = cls.options(cfg.method)
        check(o.base in BASES, f"unknown method.base '{o.base}'; choose one of: kd, dkd")
        check(o.mode in MODES, f"unknown method.mode '{o.mode}'; choose one of: global, instance")
        check(o.t_min > 0, f"method.t_min must be > 0 (got {o.t_min}); the authors use 1")
        for k in ("t_range", "lambda_max", "curriculum", "dkd_alpha", "dkd_beta"):
            check(getattr(o, k) >= 0, f"method.{k} must be >= 0 (got {getattr(o, k)})")
        check(o.hidden >= 1, f"method.hidden must be >= 1 (got {o.hidden})")

    @classmethod
    def build(cls, cfg, ctx):
        opts = cls.options(cfg.method)
        recipe = cfg.student.train
        steps = epoch_steps(cfg, ctx)
        n_cls = ctx.data.num_classes
        return cls(ctx.new_student(), ctx.teacher(), opts, cfg.alpha, n_cls, steps, recipe.epochs)

    def epoch(self) -> int:
        """The current 1-based epoch (the step counter only advances in training)."""
        return int(self.step) // self.steps_per_epoch + 1

    def lambda_now(self) -> torch.Tensor:
        """cosine_lambda for the current epoch as a tensor: no host-device sync per step."""
        if self.curriculum <= 0:
            return torch.full((), self.opts.lambda_max, device=self.step.device)
        epoch = torch.div(self.step, self.steps_per_epoch, rounding_mode="floor") + 1
        e = epoch.clamp(max=self.curriculum).float()
        return self.opts.lambda_max * (1.0 - torch.cos(math.pi * e / self.curriculum)) / 2.0

    def effective(self) -> dict[str, Any]:
        """T is learned, not a knob: ``T`` is None and ``T_learned`` the current value (the
        last epoch's mean for mode=instance)."""
        with torch.no_grad():
            if self.opts.mode == "global":
                t = self.opts.t_min + self.opts.t_range * torch.sigmoid(self.temperature.theta)
                learned = float(t)
            else:
                learned = self.last_T
        alpha = self.alpha if self.opts.base == "kd" else None
        return {"T": None, "T_learned": learned, "alpha": alpha, "base": self.opts.base}

    def epoch_metrics(self) -> dict[str, Any]:
        """Logged once per epoch (history.csv): the mean learned T and the last lambda."""
        n = float(self.t_count)
        if n:
            self.last_T = float(self.t_sum) / n
        out = {
            "T": float(self.t_sum) / n if n else None,
            "ctkd_lambda": cosine_lambda(self.epoch() - 1, self.curriculum, self.opts.lambda_max),
        }
        self.t_sum.zero_()
        self.t_count.zero_()
        return out

    def forward(self, x, y, idx, teacher_out):
        logits = self.student(x)
        if teacher_out is None:
            teacher_out = self.teacher_outputs(x)
        lam = self.lambda_now()
        T = self.temperature(logits, teacher_out, lam)  # (B, 1)
        if self.training:
            self.step += 1
            self.t_sum += T.detach().mean()
            self.t_count += 1
        return logits, self.losses(logits, teacher_out, y, T)

    def losses(self, s, t, y, T: torch.Tensor) -> dict[str, torch.Tensor]:
        o = self.opts
        ce = hard_ce(s, y)
        if o.base == "kd":
            soft = kd_per_sample(s, t, T).mean()
            return {"soft": self.alpha * soft, "hard": (1.0 - self.alpha) * ce}
        tckd, nckd = dkd_per_sample(s, t, y, T)
        t2 = T.squeeze(1) ** 2
        return {
            "hard": ce,
            "tckd": o.dkd_alpha * (t2 * tckd).mean(),
            "nckd": o.dkd_beta * (t2 * nckd).mean(),
        }
