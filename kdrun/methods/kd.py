"""Hinton et al. (2015) knowledge distillation with soft targets at temperature T."""

from __future__ import annotations

from dataclasses import dataclass

from kdrun.losses import kd_loss
from kdrun.methods.base import Distiller, MethodOptions, register_method


@dataclass
class KDOptions(MethodOptions):
    name: str = "kd"


@register_method("kd")
class KD(Distiller):
    """loss = alpha * T^2 * KL(p_t^T || p_s^T) + (1 - alpha) * CE; T and alpha are top-level."""

    Options = KDOptions

    def __init__(self, student, teacher, T: float, alpha: float):
        super().__init__(student, teacher)
        self.T, self.alpha = T, alpha

    @classmethod
    def build(cls, cfg, ctx):
        return cls(ctx.new_student(), ctx.teacher(), cfg.T, cfg.alpha)

    def forward(self, x, y, idx, teacher_out):
        logits = self.student(x)
        if teacher_out is None:
            teacher_out = self.teacher_outputs(x)
        return logits, kd_loss(logits, teacher_out, y, self.T, self.alpha)
