"""Normalized KD (Yang et al., ICCV 2023, arXiv 2303.13005, "From Knowledge Distillation to
Self-Knowledge Distillation: a unified approach with normalized loss and customized soft
labels").

KD's loss splits into a target part and a non-target part whose probabilities do not sum to
the same value for teacher and student; NKD renormalises the non-target part so both sum to
one. With p = softmax(z) at T = 1 and, over the C - 1 non-target classes only, q^T =
softmax(z_{!y} / T),

    target     = -mean_i  p_t[i, y_i] * log p_s[i, y_i]          (teacher prob. held fixed)
    non_target = -gamma * T^2 * mean_i  sum_{j != y_i} q_t^T[i, j] * log q_s^T[i, j]
    loss       = ce_weight * CE + target + non_target

The temperature is the run's top-level ``T``. The non-target term equals gamma * T^2 * (KL +
the teacher's entropy), so its gradient is that of the KL and vanishes when q_s = q_t.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kdrun.methods.base import Distiller, MethodOptions, register_method
from kdrun.methods.feature_base import check
from kdrun.methods.losses import hard_ce


def non_target_logits(z: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(B, C) -> (B, C - 1): each row without its target column, other classes in order."""
    b, c = z.shape
    keep = ~F.one_hot(targets, c).bool()
    return z[keep].view(b, c - 1)


def nkd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    T: float,
    gamma: float,
) -> dict[str, torch.Tensor]:
    """The target and the (gamma * T^2 weighted) normalised non-target terms."""
    s, t = student_logits.float(), teacher_logits.float()
    log_p_s = F.log_softmax(s, dim=1).gather(1, targets[:, None]).squeeze(1)
    p_t = F.softmax(t, dim=1).gather(1, targets[:, None]).squeeze(1).detach()
    log_q_s = F.log_softmax(non_target_logits(s, targets) / T, dim=1)
    q_t = F.softmax(non_target_logits(t, targets) / T, dim=1).detach()
    return {
        "target": -(p_t * log_p_s).mean(),
        "non_target": -gamma * T * T * (q_t * log_q_s).sum(1).mean(),
    }


@dataclass
class NKDOptions(MethodOptions):
    name: str = "nkd"
    ce_weight: float = 1.0  # cls_KD: the student's own classification loss, weight 1
    gamma: float = 3.5  # cls_KD configs/distillers/cifar100/*: NKDLoss(temp=3.0, gamma=3.5)


@register_method("nkd")
class NKD(Distiller):
    """Cacheable: it needs only the teacher's logits."""

    Options = NKDOptions

    def __init__(self, student, teacher, opts: NKDOptions, T: float):
        super().__init__(student, teacher)
        self.opts, self.T = opts, T

    @classmethod
    def check_config(cls, cfg) -> None:
        o = cls.options(cfg.method)
        for k in ("ce_weight", "gamma"):
            check(getattr(o, k) >= 0, f"method.{k} must be >= 0 (got {getattr(o, k)})")

    @classmethod
    def build(cls, cfg, ctx):
        return cls(ctx.new_student(), ctx.teacher(), cls.options(cfg.method), cfg.T)

    def forward(self, x, y, idx, teacher_out):
        logits = self.student(x)
        if teacher_out is None:
            teacher_out = self.teacher_outputs(x)
        losses = {"hard": self.opts.ce_weight * hard_ce(logits, y)}
        losses.update(nkd_loss(logits, teacher_out, y, self.T, self.opts.gamma))
        return logits, losses
