"""Hinton et al. (2015) knowledge distillation with soft targets at temperature T.

``method.logit_standardization=true`` z-scores student and teacher logits per sample before
the temperature softmax (Sun et al., CVPR 2024), so the student matches the teacher's logit
*relations* rather than their range.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from kdrun.methods.base import Distiller, MethodOptions, register_method
from kdrun.methods.losses import kd_loss


@dataclass
class KDOptions(MethodOptions):
    name: str = "kd"
    logit_standardization: bool = False


@register_method("kd")
class KD(Distiller):
    """loss = alpha * T^2 * KL(p_t^T || p_s^T) + (1 - alpha) * CE; T and alpha are top-level."""

    accepts_unlabelled = True  # labels enter through hard_ce only

    Options = KDOptions

    def __init__(self, student, teacher, T: float, alpha: float, logit_standardization=False):
        super().__init__(student, teacher)
        self.T, self.alpha = T, alpha
        self.logit_standardization = logit_standardization

    @classmethod
    def build(cls, cfg, ctx):
        opts = cls.options(cfg.method)
        return cls(ctx.new_student(), ctx.teacher(), cfg.T, cfg.alpha, opts.logit_standardization)

    def forward(self, x, y, idx, teacher_out):
        logits = self.student(x)
        if teacher_out is None:
            teacher_out = self.teacher_outputs(x)
        return logits, kd_loss(
            logits, teacher_out, y, self.T, self.alpha, self.logit_standardization
        )


def kd_at_run_settings(cfg: Any) -> Callable[[nn.Module, nn.Module], KD]:
    """How a method distils an intermediate model (an assistant, a generation) through the
    job context: KD at the run's T and alpha (the context's store key holds both)."""
    return lambda student, teacher: KD(student, teacher, cfg.T, cfg.alpha)
