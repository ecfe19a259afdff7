"""Decoupled Knowledge Distillation (Zhao et al., CVPR 2022, arXiv 2203.08679).

The KD loss splits into a target-class part (TCKD: KL between the binary distributions
[p_target, 1 - p_target]) and a non-target part (NCKD: KL between the distributions over
the C - 1 other classes, renormalised); per sample

    KL(p_t || p_s) = TCKD + (1 - p_t[target]) * NCKD.

DKD drops the (1 - p_t[target]) coupling and weights the parts freely:

    loss = ce_weight * CE + w(epoch) * T^2 * (alpha * TCKD + beta * NCKD)

with w rising linearly to 1 over the first ``warmup`` epochs (epoch e, 1-based: w = e/warmup).
T is the run's top-level ``T``; alpha and beta here are DKD's own TCKD/NCKD weights (the
top-level alpha, KD's soft-term weight, is not used).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kdrun.methods.base import Distiller, MethodOptions, epoch_steps, register_method
from kdrun.methods.feature_base import check
from kdrun.methods.losses import hard_ce


def dkd_per_sample(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor, T: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample (TCKD, NCKD) at temperature T, without the T^2 factor or weights."""
    s = student_logits.float() / T
    t = teacher_logits.float() / T
    c = s.shape[1]
    # Index arithmetic, not one_hot / boolean masks: those check values or size their output
    # from the data, which syncs with a GPU and breaks torch.compile graphs.
    cls = torch.arange(c, device=s.device)
    gt = cls[None, :] == targets[:, None]
    # the C - 1 non-target classes of each row, in class order: j, or j + 1 past the target
    rest = cls[None, : c - 1] + (cls[None, : c - 1] >= targets[:, None]).long()

    def binary_log_probs(z: torch.Tensor) -> torch.Tensor:
        # log [p_target, 1 - p_target], from log-sum-exps so neither part underflows to log 0
        lse = z.logsumexp(1)
        log_target = z.gather(1, targets[:, None]).squeeze(1) - lse
        log_rest = z.masked_fill(gt, float("-inf")).logsumexp(1) - lse
        return torch.stack([log_target, log_rest], 1)

    bs, bt = binary_log_probs(s), binary_log_probs(t)
    tckd = (bt.exp() * (bt - bs)).sum(1)
    # the C - 1 non-target logits of each row, in class order
    ls = F.log_softmax(s.gather(1, rest), 1)
    lt = F.log_softmax(t.gather(1, rest), 1)
    nckd = (lt.exp() * (lt - ls)).sum(1)
    return tckd, nckd


def dkd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    T: float,
    alpha: float,
    beta: float,
) -> dict[str, torch.Tensor]:
    """alpha * T^2 * TCKD and beta * T^2 * NCKD, each averaged over the batch."""
    tckd, nckd = dkd_per_sample(student_logits, teacher_logits, targets, T)
    return {"tckd": alpha * T * T * tckd.mean(), "nckd": beta * T * T * nckd.mean()}


@dataclass
class DKDOptions(MethodOptions):
    name: str = "dkd"
    ce_weight: float = 1.0
    alpha: float = 1.0
    beta: float = 8.0
    warmup: int = 20  # epochs; clamped to the student's epochs


@register_method("dkd")
class DKD(Distiller):
    """Cacheable: it needs only the teacher's logits."""

    Options = DKDOptions

    def __init__(
        self, student, teacher, opts: DKDOptions, steps_per_epoch: int, epochs: int, T: float = 4.0
    ):
        super().__init__(student, teacher)
        self.opts, self.T = opts, T  # T: the run's top-level T (mdistiller CFG.DKD.T = 4)
        self.steps_per_epoch = max(1, steps_per_epoch)
        # mdistiller warms up over 20 of 240 epochs; kdrun recipes are short, so never longer
        # than the run itself (warmup >= epochs: the full weight is reached in the last epoch).
        self.warmup = min(opts.warmup, epochs)
        # counted in the distiller's state, so a resumed run continues the same warm-up
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    @classmethod
    def check_config(cls, cfg) -> None:
        o = cls.options(cfg.method)
        for k in ("ce_weight", "alpha", "beta", "warmup"):
            check(getattr(o, k) >= 0, f"method.{k} must be >= 0 (got {getattr(o, k)})")

    @classmethod
    def build(cls, cfg, ctx):
        opts = cls.options(cfg.method)
        recipe = cfg.student.train
        steps = epoch_steps(cfg, ctx)
        return cls(ctx.new_student(), ctx.teacher(), opts, steps, recipe.epochs, cfg.T)

    def warmup_factor(self) -> torch.Tensor:
        """min(epoch / warmup, 1) for the current 1-based epoch, as a tensor (no device sync)."""
        if self.warmup <= 0:
            return torch.ones((), device=self.step.device)
        epoch = torch.div(self.step, self.steps_per_epoch, rounding_mode="floor") + 1
        return (epoch.float() / self.warmup).clamp(max=1.0)

    def forward(self, x, y, idx, teacher_out):
        logits = self.student(x)
        if teacher_out is None:
            teacher_out = self.teacher_outputs(x)
        o = self.opts
        w = self.warmup_factor()
        if self.training:
            self.step += 1
        parts = dkd_loss(logits, teacher_out, y, self.T, o.alpha, o.beta)
        losses = {"hard": o.ce_weight * hard_ce(logits, y)}
        losses.update({k: w * v for k, v in parts.items()})
        return logits, losses
