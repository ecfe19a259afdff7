"""Shared machinery of the feature-, relation- and contrastive methods (fitnet, at, rkd, sp, crd).

They read intermediate tensors of student and teacher through forward hooks
(:mod:`kdrun.features`), so they need the teacher's forward pass at every step: not
cacheable. Each adds its own weighted loss terms to a common core,

    loss = ce_weight * CE(student, y) + kd_weight * T^2 * KL(p_t^T || p_s^T) + <method terms>

(T: the run's top-level ``T``, RepDistiller's --kd_T 4),

with RepDistiller's defaults ce_weight 1, kd_weight 0 (the feature loss alone, as in the CRD
paper's comparison table). Their adapters/embeddings are submodules of the Distiller, so
``trainable_parameters()`` gives them to the optimiser; memory banks are buffers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from omegaconf import DictConfig, OmegaConf

from kdrun.data import DATASETS
from kdrun.errors import ConfigError
from kdrun.methods.base import Distiller, MethodOptions
from kdrun.methods.losses import hard_ce, kl_soft
from kdrun.models import build_model, is_pretrained, preprocessing
from kdrun.models.features import Taps, capture, probe, resolve_stage

# Shape probes before any data is loaded (check_config) use this input: every image model
# supports 32x32 RGB. Only dimensionality and module names are checked there.
PROBE_SHAPE = (3, 32, 32)


@dataclass
class FeatureOptions(MethodOptions):
    ce_weight: float = 1.0  # RepDistiller -r / mdistiller *.LOSS.CE_WEIGHT
    kd_weight: float = 0.0  # RepDistiller -a: optional soft-target term on top (0 = off)


def check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def probe_shape(cfg: DictConfig) -> tuple[int, int, int]:
    """The probe input: 32x32 RGB, or the input size a pretrained teacher prescribes (a ViT
    takes no other size)."""
    pre = preprocessing(cfg.teacher) if is_pretrained(cfg.teacher) else None
    return (3, *pre.image_size) if pre and pre.image_size else PROBE_SHAPE


def _structure_only(model_cfg: DictConfig) -> DictConfig:
    """The model's architecture without its weights: checks read module names and shapes."""
    c = OmegaConf.merge(model_cfg, {"weights": None, "num_classes_from_data": True})
    c._set_parent(model_cfg._get_parent())  # keep its role (teacher/student) for messages
    return c


def probe_models(cfg: DictConfig) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Student and teacher built on the CPU for shape checks, leaving the RNG untouched."""
    n_cls = DATASETS[cfg.dataset.name].num_classes or 10  # 0: the user's data, not yet counted
    shape = probe_shape(cfg)
    with torch.random.fork_rng(devices=[]):
        s = build_model(_structure_only(cfg.student), shape, n_cls)
        t = build_model(_structure_only(cfg.teacher), shape, n_cls)
    return s, t


def check_layer_options(opts: Any, cfg: DictConfig) -> None:
    """method.student_layer / method.teacher_layer name stages the two models have."""
    s, t = probe_models(cfg)
    resolve_stage(s, opts.student_layer, "method.student_layer")
    resolve_stage(t, opts.teacher_layer, "method.teacher_layer")


class FeatureDistiller(Distiller):
    accepts_unlabelled = True  # labels enter through hard_ce only (CRD's negatives: not)
    cacheable: ClassVar[bool] = False  # needs the teacher's intermediate features every step

    def __init__(self, student, teacher, opts: Any):
        super().__init__(student, teacher)
        self.opts = opts
        self.T = 4.0  # of the optional KD term; build() sets the run's top-level T
        self.student_stages: list[str] = []
        self.teacher_stages: list[str] = []
        self.use_embedding = False  # capture the input of kd_head on both models

    # ---- configuration -------------------------------------------------------------
    @classmethod
    def check_config(cls, cfg: DictConfig) -> None:
        o = cls.options(cfg.method)
        check(o.ce_weight >= 0, f"method.ce_weight must be >= 0 (got {o.ce_weight})")
        check(o.kd_weight >= 0, f"method.kd_weight must be >= 0 (got {o.kd_weight})")
        if hasattr(o, "beta"):
            check(o.beta >= 0, f"method.beta must be >= 0 (got {o.beta})")
        cls.check_options(o, cfg)

    @classmethod
    def check_options(cls, opts: Any, cfg: DictConfig) -> None:
        """Method-specific checks; run before anything is trained."""

    @classmethod
    def build(cls, cfg: DictConfig, ctx) -> Distiller:
        d = cls.create(cfg, ctx)
        d.T = float(cfg.T)  # one place for every feature method: the top-level T
        return d

    @classmethod
    def create(cls, cfg: DictConfig, ctx) -> FeatureDistiller:
        """The method's own construction (its adapters, memory banks, stage choice)."""
        raise NotImplementedError

    def effective(self) -> dict[str, Any]:
        return {"T": self.T if self.opts.kd_weight > 0 else None, "alpha": None}

    @staticmethod
    def in_shape(ctx) -> tuple[int, ...]:
        return tuple(ctx.data.in_shape)

    # ---- training ------------------------------------------------------------------
    def forward(self, x, y, idx, teacher_out):
        with capture(self.student, self.student_stages, self.use_embedding) as s:
            logits = self.student(x)
        with torch.no_grad(), capture(self.teacher, self.teacher_stages, self.use_embedding) as t:
            t_logits = self.teacher(x)
        o = self.opts
        losses = {"hard": o.ce_weight * hard_ce(logits, y)}
        if o.kd_weight > 0:
            losses["soft"] = o.kd_weight * self.T * self.T * kl_soft(logits, t_logits, self.T)
        # Feature losses in float32 even under autocast: normalisations and exp(s / 0.07).
        with torch.autocast(x.device.type, enabled=False):
            losses.update(self.feature_losses(s, t, y, idx))
        return logits, losses

    def feature_losses(
        self, s: Taps, t: Taps, y: torch.Tensor, idx: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        raise NotImplementedError


def stage_pair(student, teacher, opts, in_shape) -> tuple[str, str, Taps, Taps]:
    """Resolve ``opts.student_layer``/``teacher_layer`` and probe their output shapes."""
    s_name = resolve_stage(student, opts.student_layer, "method.student_layer")
    t_name = resolve_stage(teacher, opts.teacher_layer, "method.teacher_layer")
    return s_name, t_name, probe(student, in_shape, [s_name]), probe(teacher, in_shape, [t_name])
