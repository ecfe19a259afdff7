"""ReviewKD: distilling knowledge via knowledge review (Chen et al., CVPR 2021, arXiv
2104.09044).

Each teacher level i is matched by a fusion of the student's level i and all its deeper
levels. Levels are the models' ``kd_stages`` plus the embedding (the classifier's input, a
1x1 map), deepest first; a non-spatial feature (an MLP's) is a 1x1 map. Attention-based
fusion (ABF), from the deepest level up:

    x_i  = BN(conv1x1(f_i))                                    (to ``mid`` channels)
    a    = sigmoid(conv1x1([x_i, up(r_{i+1})]))                (2 attention maps; not deepest)
    r_i  = a_0 * x_i + a_1 * up(r_{i+1}),   resized to the teacher's level-i size
    o_i  = BN(conv3x3(r_i))                                    (to the teacher's channels)

``up`` is nearest-neighbour resizing. The hierarchical context loss compares o_i with the
teacher's feature g_i at the full resolution and at 4x4, 2x2, 1x1 pools (levels below the
map's size only), weighted 1, 1/2, 1/4, 1/8 and normalised by the weights' sum:

    HCL  = sum_i [ mse(o_i, g_i) + sum_l w_l mse(pool_l(o_i), pool_l(g_i)) ] / (1 + sum_l w_l)
    loss = ce_weight * CE + weight * min(epoch / warmup, 1) * HCL

When the two models have different numbers of levels, the deepest min(n_s, n_t) of each pair.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from kdrun.methods.base import epoch_steps, register_method
from kdrun.methods.feature_base import FeatureDistiller, FeatureOptions, check
from kdrun.models.features import Taps, probe


def as_map(f: torch.Tensor) -> torch.Tensor:
    """A feature as an (N, C, H, W) map: spatial maps as they are, anything else as 1x1."""
    return f if f.dim() == 4 else f.flatten(1)[:, :, None, None]


def hcl_pair(fs: torch.Tensor, ft: torch.Tensor) -> torch.Tensor:
    """The hierarchical context loss of one level (fs, ft: the same shape)."""
    h = fs.shape[2]
    loss, weight, total = F.mse_loss(fs, ft), 1.0, 1.0
    for size in (4, 2, 1):
        if size >= h:
            continue
        weight /= 2.0
        loss = loss + weight * F.mse_loss(
            F.adaptive_avg_pool2d(fs, size), F.adaptive_avg_pool2d(ft, size)
        )
        total += weight
    return loss / total


def hcl_loss(student: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
    return sum(hcl_pair(s.float(), t.float()) for s, t in zip(student, teacher, strict=True))


class ABF(nn.Module):
    """Attention-based fusion of one student level with the fused deeper levels."""

    def __init__(self, in_ch: int, mid_ch: int, out_ch: int, fuse: bool):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_ch, mid_ch, 1, bias=False), nn.BatchNorm2d(mid_ch))
        self.conv2 = nn.Sequential(
            nn.Conv2d(mid_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch)
        )
        self.att = nn.Sequential(nn.Conv2d(2 * mid_ch, 2, 1), nn.Sigmoid()) if fuse else None
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)  # as the authors' ABF
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(
        self, f: torch.Tensor, deeper: torch.Tensor | None, out_hw: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(output matched against the teacher, residual passed to the next shallower level)."""
        x = self.conv1(f)
        if self.att is not None and deeper is not None:
            y = F.interpolate(deeper, size=x.shape[-2:], mode="nearest")
            a = self.att(torch.cat([x, y], 1))
            x = x * a[:, :1] + y * a[:, 1:]
        if tuple(x.shape[-2:]) != tuple(out_hw):
            x = F.interpolate(x, size=out_hw, mode="nearest")
        return self.conv2(x), x


class ReviewFusion(nn.Module):
    """All ABFs, deepest level first; maps student levels onto teacher level shapes."""

    def __init__(self, s_shapes: list[tuple[int, ...]], t_shapes: list[tuple[int, ...]]):
        super().__init__()
        mid = min(512, s_shapes[-1][0])  # the authors' min(512, in_channels[-1])
        n = len(s_shapes)
        self.out_hw = [tuple(t[1:]) for t in t_shapes]
        self.abfs = nn.ModuleList(
            ABF(s_shapes[i][0], mid, t_shapes[i][0], fuse=i < n - 1) for i in range(n)
        )

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        outs: list[torch.Tensor] = [None] * len(feats)  # type: ignore[list-item]
        residual = None
        for i in reversed(range(len(feats))):
            outs[i], residual = self.abfs[i](feats[i], residual, self.out_hw[i])
        return outs


@dataclass
class ReviewKDOptions(FeatureOptions):
    name: str = "reviewkd"
    weight: float = 1.0  # ReviewKD train.py --kd-loss-weight 1.0; mdistiller REVIEWKD_WEIGHT 1.0
    warmup: int = 20  # epochs; ReviewKD train.py --kd-warm-up 20; clamped to the run's epochs


@register_method("reviewkd")
class ReviewKD(FeatureDistiller):
    Options = ReviewKDOptions

    def __init__(self, student, teacher, opts, in_shape, steps_per_epoch: int, epochs: int):
        super().__init__(student, teacher, opts)
        self.use_embedding = True
        s_taps = probe(student, in_shape, list(student.kd_stages), embedding=True)
        t_taps = probe(teacher, in_shape, list(teacher.kd_stages), embedding=True)
        s_levels = [as_map(v) for v in [*s_taps.stages.values(), s_taps.embedding]]
        t_levels = [as_map(v) for v in [*t_taps.stages.values(), t_taps.embedding]]
        k = min(len(s_levels), len(t_levels))
        self.student_stages = list(student.kd_stages)[len(s_levels) - k :]
        self.teacher_stages = list(teacher.kd_stages)[len(t_levels) - k :]
        self.fusion = ReviewFusion(
            [tuple(v.shape[1:]) for v in s_levels[-k:]], [tuple(v.shape[1:]) for v in t_levels[-k:]]
        )
        self.steps_per_epoch = max(1, steps_per_epoch)
        self.warmup = min(opts.warmup, epochs)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    @classmethod
    def check_options(cls, opts, cfg) -> None:
        check(opts.weight >= 0, f"method.weight must be >= 0 (got {opts.weight})")
        check(opts.warmup >= 0, f"method.warmup must be >= 0 (got {opts.warmup})")

    @classmethod
    def create(cls, cfg, ctx):
        opts = cls.options(cfg.method)
        recipe = cfg.student.train
        steps = epoch_steps(cfg, ctx)
        return cls(ctx.new_student(), ctx.teacher(), opts, cls.in_shape(ctx), steps, recipe.epochs)

    @staticmethod
    def levels(taps: Taps, names: list[str]) -> list[torch.Tensor]:
        return [as_map(taps.stages[n]) for n in names] + [as_map(taps.embedding)]

    def warmup_factor(self) -> torch.Tensor:
        if self.warmup <= 0:
            return torch.ones((), device=self.step.device)
        epoch = torch.div(self.step, self.steps_per_epoch, rounding_mode="floor") + 1
        return (epoch.float() / self.warmup).clamp(max=1.0)

    def feature_losses(self, s: Taps, t: Taps, y, idx):
        # the deepest k levels: the last k - 1 stages and the embedding
        k = len(self.fusion.abfs)
        fs = self.levels(s, self.student_stages)[-k:]
        ft = self.levels(t, self.teacher_stages)[-k:]
        w = self.warmup_factor()
        if self.training:
            self.step += 1
        return {"review": self.opts.weight * w * hcl_loss(self.fusion(fs), ft)}
