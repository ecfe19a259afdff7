"""Relational knowledge distillation (Park et al., CVPR 2019, arXiv 1904.05068).

On the embeddings (the input of each model's classifier), the student matches the teacher's
*relations* within the batch, not its coordinates, so the dimensions may differ:
  - distance: pairwise Euclidean distances, each matrix divided by its mean off-diagonal
    distance;  loss = mean over all (i, j) of Huber(d_s/mu_s - d_t/mu_t);
  - angle: for every vertex j and pair (i, k), cos of the angle at j,
    <(e_i - e_j)/|e_i - e_j|, (e_k - e_j)/|e_k - e_j|>;  loss = mean over all (j, i, k) of
    Huber(cos_s - cos_t)  (degenerate triplets give 0 on both sides).
Huber is smooth L1 with delta 1, as in the paper.

Several processes (DDP): the batch here is the rank's LOCAL slice of the global batch, so
relations between samples on different ranks are not compared; keep the per-rank batch of a
single-process recipe by scaling batch_size with the number of processes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kdrun.methods.base import register_method
from kdrun.methods.feature_base import FeatureDistiller, FeatureOptions, check
from kdrun.models.features import Taps


def normalized_distances(e: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """(B, D) -> (B, B) Euclidean distances divided by their mean over pairs i != j."""
    e = e.float().flatten(1)
    sq = e.pow(2).sum(1)
    d = (sq[:, None] + sq[None, :] - 2 * e @ e.t()).clamp(min=eps).sqrt()
    off = ~torch.eye(len(e), dtype=torch.bool, device=e.device)
    d = d * off  # exact zeros on the diagonal (the clamp left sqrt(eps) there)
    n = len(e)
    return d / (d.sum() / max(n * (n - 1), 1)).clamp(min=eps)  # a 1-sample batch gives zeros


def angles(e: torch.Tensor) -> torch.Tensor:
    """(B, D) -> (B, B, B): [j, i, k] = cos of the angle at vertex j between e_i and e_k."""
    e = e.float().flatten(1)
    u = F.normalize(e[None, :, :] - e[:, None, :], dim=2)  # u[j, i] = unit(e_i - e_j)
    return u @ u.transpose(1, 2)


def rkd_distance_loss(e_s: torch.Tensor, e_t: torch.Tensor) -> torch.Tensor:
    return F.smooth_l1_loss(normalized_distances(e_s), normalized_distances(e_t))


def rkd_angle_loss(e_s: torch.Tensor, e_t: torch.Tensor) -> torch.Tensor:
    return F.smooth_l1_loss(angles(e_s), angles(e_t))


@dataclass
class RKDOptions(FeatureOptions):
    name: str = "rkd"
    distance_weight: float = 25.0  # paper / RepDistiller / mdistiller RKD.DISTANCE_WEIGHT
    angle_weight: float = 50.0  # paper / RepDistiller / mdistiller RKD.ANGLE_WEIGHT


@register_method("rkd")
class RKD(FeatureDistiller):
    """No trainable extras: relations are compared in each model's own embedding space."""

    Options = RKDOptions

    def __init__(self, student, teacher, opts):
        super().__init__(student, teacher, opts)
        self.use_embedding = True

    @classmethod
    def check_options(cls, opts, cfg) -> None:
        for k in ("distance_weight", "angle_weight"):
            check(getattr(opts, k) >= 0, f"method.{k} must be >= 0 (got {getattr(opts, k)})")

    @classmethod
    def create(cls, cfg, ctx):
        return cls(ctx.new_student(), ctx.teacher(), cls.options(cfg.method))

    def feature_losses(self, s: Taps, t: Taps, y, idx):
        o = self.opts
        return {
            "rkd_distance": o.distance_weight * rkd_distance_loss(s.embedding, t.embedding),
            "rkd_angle": o.angle_weight * rkd_angle_loss(s.embedding, t.embedding),
        }
