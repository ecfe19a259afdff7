"""DIST: knowledge distillation from a stronger teacher (Huang et al., NeurIPS 2022,
arXiv 2205.10536).

Instead of matching the soft targets exactly (KL), DIST matches their *relations*, with the
Pearson correlation as the match, so a student only has to preserve the teacher's preference
order and relative gaps, not its calibration. With P_s, P_t the (B, C) softmax outputs at
temperature T,

    inter = 1 - mean_i  rho(P_s[i, :], P_t[i, :])     (per sample, across classes)
    intra = 1 - mean_c  rho(P_s[:, c], P_t[:, c])     (per class, across the batch)
    loss  = ce_weight * CE + weight * T^2 * (beta * inter + gamma * intra)

where rho(a, b) is the cosine similarity of the mean-centred vectors (eps 1e-8 in the
denominator, as in the authors' code). The temperature is the run's top-level ``T``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kdrun.methods.base import Distiller, MethodOptions, register_method
from kdrun.methods.feature_base import check
from kdrun.methods.losses import hard_ce


def pearson_rows(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pearson correlation of each row of ``a`` with the same row of ``b``: shape (rows,)."""
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def inter_class_relation(p_s: torch.Tensor, p_t: torch.Tensor) -> torch.Tensor:
    """1 - mean over samples of the correlation of their class distributions."""
    return 1 - pearson_rows(p_s, p_t).mean()


def intra_class_relation(p_s: torch.Tensor, p_t: torch.Tensor) -> torch.Tensor:
    """1 - mean over classes of the correlation of that class's scores across the batch."""
    return inter_class_relation(p_s.t(), p_t.t())


def dist_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, T: float, beta: float, gamma: float
) -> dict[str, torch.Tensor]:
    """beta * T^2 * inter and gamma * T^2 * intra, at temperature T."""
    p_s = F.softmax(student_logits.float() / T, dim=1)
    p_t = F.softmax(teacher_logits.float() / T, dim=1)
    scale = T * T
    return {
        "inter": beta * scale * inter_class_relation(p_s, p_t),
        "intra": gamma * scale * intra_class_relation(p_s, p_t),
    }


@dataclass
class DISTOptions(MethodOptions):
    name: str = "dist"
    ce_weight: float = 1.0  # image_classification_sota dist_cifar.yaml: ori_loss_weight 1
    weight: float = 2.0  # same file: kd_loss_weight 2 (multiplies both relation terms)
    beta: float = 1.0  # inter-class weight; DIST(beta=1, gamma=1, tau=4) for kd: dist_t4
    gamma: float = 1.0  # intra-class weight


@register_method("dist")
class DIST(Distiller):
    """Cacheable: it needs only the teacher's logits."""

    accepts_unlabelled = True  # labels enter through hard_ce only

    Options = DISTOptions

    def __init__(self, student, teacher, opts: DISTOptions, T: float):
        super().__init__(student, teacher)
        self.opts, self.T = opts, T

    @classmethod
    def check_config(cls, cfg) -> None:
        o = cls.options(cfg.method)
        for k in ("ce_weight", "weight", "beta", "gamma"):
            check(getattr(o, k) >= 0, f"method.{k} must be >= 0 (got {getattr(o, k)})")

    @classmethod
    def build(cls, cfg, ctx):
        return cls(ctx.new_student(), ctx.teacher(), cls.options(cfg.method), cfg.T)

    def forward(self, x, y, idx, teacher_out):
        logits = self.student(x)
        if teacher_out is None:
            teacher_out = self.teacher_outputs(x)
        o = self.opts
        parts = dist_loss(logits, teacher_out, self.T, o.beta, o.gamma)
        losses = {"hard": o.ce_weight * hard_ce(logits, y)}
        losses.update({k: o.weight * v for k, v in parts.items()})
        return logits, losses
