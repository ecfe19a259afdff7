"""Distillation from an ensemble of teachers (Hinton et al. 2015, section 2; You et al.,
KDD 2017, "Learning from Multiple Teacher Networks").

Member 0 is the run's teacher; the others are teachers trained once each through the store,
each from its own seed. The student learns the soft targets of the averaged distribution:

    average=probs:  p^T = (1/K) sum_k softmax(z_k / T)       (arithmetic mean, Hinton 2015)
    average=logits: p^T = softmax((1/K) sum_k z_k / T)       (~ normalised geometric mean)

``teacher_outputs`` returns logits whose softmax at T is exactly that p^T (for probs:
T log p^T), so the run's KD loss and the per-sample logit cache apply unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from kdrun.engine import accuracy
from kdrun.errors import ConfigError
from kdrun.methods.base import MethodOptions, register_method
from kdrun.methods.kd import KD
from kdrun.methods.model_options import derived_model

AVERAGES = ("probs", "logits")
SEED_STRIDE = 1000  # member k trains from seed + 1000 k: never another run's own seed


@dataclass
class MultiTeacherOptions(MethodOptions):
    name: str = "multi_teacher"
    size: int = 3  # members in all, the run's teacher included
    # Members 1, 2, ...: overrides of the run's teacher config; the rest are plain copies.
    teachers: list[dict[str, Any]] = field(default_factory=list)
    average: str = "probs"  # probs | logits


def ensemble_logits(logits: list[torch.Tensor], T: float, average: str) -> torch.Tensor:
    """Logits whose softmax at temperature T is the ensemble's averaged distribution."""
    z = torch.stack([t.float() for t in logits])  # (K, B, C)
    if average == "logits":
        return z.mean(0)
    log_p = torch.log_softmax(z / T, dim=-1)
    return T * (torch.logsumexp(log_p, dim=0) - math.log(len(logits)))


def member_configs(cfg) -> list:
    opts = MultiTeacher.options(cfg.method)
    if opts.average not in AVERAGES:
        raise ConfigError(
            f"unknown method.average '{opts.average}'; choose one of: {', '.join(AVERAGES)}"
        )
    if opts.size < 1:
        raise ConfigError(f"method.size must be >= 1 (got {opts.size})")
    n = max(opts.size, 1 + len(opts.teachers))
    return [
        derived_model(
            cfg.teacher,
            opts.teachers[k - 1] if k <= len(opts.teachers) else {},
            f"method.teachers[{k - 1}]",
        )
        for k in range(1, n)
    ]


@register_method("multi_teacher")
class MultiTeacher(KD):
    # its members are trained and tested on the student's inputs
    cross_view = False
    accepts_unlabelled = False  # trains its extra teachers on the student's labels

    Options = MultiTeacherOptions

    def __init__(self, student, teachers: list[nn.Module], T: float, alpha: float, average: str):
        super().__init__(student, nn.ModuleList(teachers), T, alpha)
        self.average = average

    @classmethod
    def check_config(cls, cfg) -> None:
        member_configs(cfg)

    @classmethod
    def build(cls, cfg, ctx):
        members = [ctx.teacher()]
        for k, mcfg in enumerate(member_configs(cfg), start=1):
            members.append(ctx.model(mcfg, f"teacher{k}", seed=cfg.seed + SEED_STRIDE * k))
        opts = cls.options(cfg.method)
        return cls(ctx.new_student(), members, cfg.T, cfg.alpha, opts.average)

    def teacher_output_spec(self) -> dict[str, Any]:
        # The averaged logits depend on T when averaging probabilities (T log p^T)
        T = self.T if self.average == "probs" else None
        return {"outputs": "ensemble_logits", "average": self.average, "T": T}

    @torch.no_grad()
    def teacher_outputs(self, x: torch.Tensor) -> torch.Tensor:
        return ensemble_logits([t(x) for t in self.teacher], self.T, self.average)

    def extra_metrics(self, ctx) -> dict[str, Any]:
        y = ctx.data.y_test
        member_logits = [ctx.evaluate(t) for t in self.teacher]
        ens = ensemble_logits(member_logits, self.T, self.average)  # what the student learns
        ens_t1 = ensemble_logits(member_logits, 1.0, self.average)  # the usual ensemble vote
        student = ctx.evaluate(self.student)
        roles = ["teacher"] + [f"teacher{k}" for k in range(1, len(self.teacher))]
        return {
            "extra_models": {r: ctx.reports[r].as_dict() for r in roles[1:]},
            "ensemble": {
                "members": len(roles),
                "average": self.average,
                "test_acc": accuracy(ens_t1, y),
                "member_test_acc": [ctx.reports[r].test_acc for r in roles],
                "student_agreement": float((student.argmax(1) == ens.argmax(1)).float().mean()),
            },
        }
