"""Hinton et al. (2015) knowledge distillation with soft targets at temperature T.

``method.logit_standardization=true`` z-scores student and teacher logits per sample before
the temperature softmax (Sun et al., CVPR 2024), so the student matches the teacher's logit
*relations* rather than their range.

``method=gd`` is generalized distillation's objective (Lopez-Paz et al., ICLR 2016, eq. 4 and
their code): the teacher's soft labels sigma(f_t(x*)/T) against the student's own untempered
softmax sigma(f_s(x)), weighted T^2 lambda (kdrun's alpha), beside (1 - lambda) CE.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

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
    # the student's softmax temperature in the soft term: None = T (Hinton et al.)
    student_T: ClassVar[float | None] = None

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
            logits, teacher_out, y, self.T, self.alpha, self.logit_standardization, self.student_T
        )


@dataclass
class GDOptions(MethodOptions):
    name: str = "gd"


@register_method("gd")
class GD(KD):
    """Generalized distillation (Lopez-Paz et al. 2016, eq. 4): loss = alpha * T^2 *
    CE(p_t^T, p_s^1) + (1 - alpha) * CE, the student's softmax untempered (computed as the KL,
    which differs by the teacher's entropy, a constant); T and alpha (their lambda) top-level."""

    Options = GDOptions
    student_T = 1.0  # the student's own softmax, untempered

    @classmethod
    def build(cls, cfg, ctx):
        cls.options(cfg.method)
        return cls(ctx.new_student(), ctx.teacher(), cfg.T, cfg.alpha)


def kd_at_run_settings(cfg: Any) -> Callable[[nn.Module, nn.Module], KD]:
    """How a method distils an intermediate model (an assistant, a generation) through the
    job context: KD at the run's T and alpha (the context's store key holds both)."""
    return lambda student, teacher: KD(student, teacher, cfg.T, cfg.alpha)
