"""Attention transfer (Zagoruyko & Komodakis, ICLR 2017, arXiv 1612.03928).

The spatial attention map of a (N, C, H, W) feature is Q = mean_c |f_c|^p, flattened and
L2-normalised per sample; for each paired stage the loss is mean over batch and positions of
(Q_s - Q_t)^2 (the authors' and RepDistiller's code), summed over pairs and weighted by beta.
|f|^p is the paper's; RepDistiller/mdistiller compute f^p (equal for even p, the default 2).
When the pair's resolutions differ, the larger feature is average-pooled to the smaller.

Stages pair by resolution by default: for each H x W present in both models, the last
student stage and the last teacher stage of that size (the end of a resolution group, as in
the paper); or give ``method.student_layers`` / ``method.teacher_layers`` explicitly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from kdrun.config import ModelConfig
from kdrun.errors import ConfigError
from kdrun.methods.base import register_method
from kdrun.methods.feature_base import (
    PROBE_SHAPE,
    FeatureDistiller,
    FeatureOptions,
    check,
    probe_models,
    probe_shape,
)
from kdrun.models import MODELS, build_model
from kdrun.models.features import Taps, probe, resolve_stage


def attention_map(f: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """(N, C, H, W) -> (N, H*W): channel mean of |f|^p, L2-normalised per sample."""
    return F.normalize(f.float().abs().pow(p).mean(1).flatten(1), dim=1)


def at_loss(f_s: torch.Tensor, f_t: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """mean((Q_s - Q_t)^2) for one stage pair; channel counts may differ."""
    hs, ws = f_s.shape[-2:]
    ht, wt = f_t.shape[-2:]
    size = (min(hs, ht), min(ws, wt))
    if (hs, ws) != size:
        f_s = F.adaptive_avg_pool2d(f_s, size)
    if (ht, wt) != size:
        f_t = F.adaptive_avg_pool2d(f_t, size)
    return (attention_map(f_s, p) - attention_map(f_t, p)).pow(2).mean()


@dataclass
class ATOptions(FeatureOptions):
    name: str = "at"
    beta: float = 1000.0  # RepDistiller -b 1000 / mdistiller AT.LOSS.FEAT_WEIGHT
    p: float = 2.0  # attention exponent (paper and RepDistiller: 2)
    student_layers: list[str] = field(default_factory=list)  # empty: pair stages by resolution
    teacher_layers: list[str] = field(default_factory=list)


def _spatial_stages(model, in_shape) -> dict[str, tuple[int, int]]:
    """kd_stages with (N, C, H, W) outputs -> their (H, W), in forward order."""
    taps = probe(model, in_shape, list(model.kd_stages))
    return {
        n: tuple(taps.stages[n].shape[-2:]) for n in model.kd_stages if taps.stages[n].dim() == 4
    }


def spatial_models() -> list[str]:
    """Registered models whose stages give spatial maps (probed; for error messages only)."""
    names = []
    with torch.random.fork_rng(devices=[]):
        for name in sorted(MODELS):
            try:
                m = build_model(OmegaConf.structured(ModelConfig(name=name)), PROBE_SHAPE, 10)
                if _spatial_stages(m, PROBE_SHAPE):
                    names.append(name)
            except Exception:  # a model that cannot take the probe input is just not listed
                continue
    return names


def pair_by_resolution(s_sizes: dict, t_sizes: dict) -> list[tuple[str, str]]:
    last_s = {size: n for n, size in s_sizes.items()}  # later stages overwrite: the last wins
    last_t = {size: n for n, size in t_sizes.items()}
    pairs = [(last_s[sz], last_t[sz]) for sz in last_s if sz in last_t]
    if not pairs:  # no common resolution: the deepest maps, pooled to the smaller
        pairs = [(list(s_sizes)[-1], list(t_sizes)[-1])]
    return pairs


@register_method("at")
class AT(FeatureDistiller):
    Options = ATOptions

    def __init__(self, student, teacher, opts, in_shape):
        super().__init__(student, teacher, opts)
        if opts.student_layers:
            s_names = [
                resolve_stage(student, n, "method.student_layers") for n in opts.student_layers
            ]
            t_names = [
                resolve_stage(teacher, n, "method.teacher_layers") for n in opts.teacher_layers
            ]
            pairs = list(zip(s_names, t_names, strict=True))
        else:
            s_sizes = _spatial_stages(student, in_shape)
            t_sizes = _spatial_stages(teacher, in_shape)
            if not (s_sizes and t_sizes):  # check_config refuses this first, with the models named
                raise ConfigError("method=at needs spatial feature maps in student and teacher")
            pairs = pair_by_resolution(s_sizes, t_sizes)
        self.pairs = pairs
        self.student_stages = [s for s, _ in pairs]
        self.teacher_stages = [t for _, t in pairs]

    @classmethod
    def check_options(cls, opts, cfg) -> None:
        check(opts.p > 0, f"method.p must be > 0 (got {opts.p}); the paper uses p=2")
        check(
            len(opts.student_layers) == len(opts.teacher_layers),
            f"method.student_layers and method.teacher_layers pair up, so they need the same "
            f"length (got {len(opts.student_layers)} and {len(opts.teacher_layers)}); leave both "
            f"empty to pair stages by resolution",
        )
        s, t = probe_models(cfg)
        shape = probe_shape(cfg)
        for role, model, model_cfg, names in (
            ("student", s, cfg.student, opts.student_layers),
            ("teacher", t, cfg.teacher, opts.teacher_layers),
        ):
            spatial = _spatial_stages(model, shape)
            if not spatial:
                why = (
                    " (a transformer: its features are tokens)"
                    if getattr(model, "kd_kind", "") == "tokens"
                    else ""
                )
                raise ConfigError(
                    f"method=at needs spatial (N, C, H, W) feature maps but {role} "
                    f"'{model_cfg.name}' has none{why}; use kd, dkd, rkd, sp or crd, or a model "
                    f"that has them: {', '.join(spatial_models())} (e.g. {role}=cnn)"
                )
            for spec in names:
                n = resolve_stage(model, spec, f"method.{role}_layers")
                check(
                    probe(model, shape, [n]).stages[n].dim() == 4,
                    f"method.{role}_layers: '{n}' of {role} '{model_cfg.name}' is not a spatial "
                    f"map; spatial stages: {', '.join(spatial)}",
                )

    @classmethod
    def create(cls, cfg, ctx):
        opts = cls.options(cfg.method)
        return cls(ctx.new_student(), ctx.teacher(), opts, cls.in_shape(ctx))

    def feature_losses(self, s: Taps, t: Taps, y, idx):
        total = sum(at_loss(s.stages[a], t.stages[b], self.opts.p) for a, b in self.pairs)
        return {"at": self.opts.beta * total}
