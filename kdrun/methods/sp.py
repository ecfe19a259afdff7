"""Similarity-preserving KD (Tung & Mori, ICCV 2019, arXiv 1907.09682).

For a batch of B samples, flatten each model's feature to (B, D), form G = F F^T (B x B),
L2-normalise each row of G, and match the matrices:

    loss = beta / B^2 * || G_s - G_t ||_F^2

Only within-batch similarities are compared, so student and teacher features may differ in
size (even an MLP student against a CNN teacher).

Several processes (DDP): the batch here is the rank's LOCAL slice of the global batch, so
relations between samples on different ranks are not compared; keep the per-rank batch of a
single-process recipe by scaling batch_size with the number of processes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kdrun.methods.base import register_method
from kdrun.methods.feature_base import FeatureDistiller, FeatureOptions, check_layer_options
from kdrun.models.features import Taps, resolve_stage


def batch_similarity(f: torch.Tensor) -> torch.Tensor:
    """(B, ...) -> (B, B) row-normalised Gram matrix."""
    f = f.float().flatten(1)
    return F.normalize(f @ f.t(), dim=1)


def sp_loss(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    b = f_s.shape[0]
    return (batch_similarity(f_s) - batch_similarity(f_t)).pow(2).sum() / (b * b)


@dataclass
class SPOptions(FeatureOptions):
    name: str = "sp"
    beta: float = 3000.0  # paper (CIFAR) / RepDistiller -b 3000 / mdistiller SP.LOSS.FEAT_WEIGHT
    student_layer: str = "-1"  # the last stage's output, as RepDistiller/mdistiller (feats[-1])
    teacher_layer: str = "-1"


@register_method("sp")
class SP(FeatureDistiller):
    """No trainable extras."""

    Options = SPOptions

    def __init__(self, student, teacher, opts):
        super().__init__(student, teacher, opts)
        self.student_stages = [resolve_stage(student, opts.student_layer, "method.student_layer")]
        self.teacher_stages = [resolve_stage(teacher, opts.teacher_layer, "method.teacher_layer")]

    @classmethod
    def check_options(cls, opts, cfg) -> None:
        check_layer_options(opts, cfg)

    @classmethod
    def create(cls, cfg, ctx):
        return cls(ctx.new_student(), ctx.teacher(), cls.options(cfg.method))

    def feature_losses(self, s: Taps, t: Taps, y, idx):
        (f_s,), (f_t,) = s.stages.values(), t.stages.values()
        return {"sp": self.opts.beta * sp_loss(f_s, f_t)}
