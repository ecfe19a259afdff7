"""Teacher-assistant KD (Mirzadeh et al., AAAI 2020, arXiv 1902.03393).

teacher -> assistant -> student: the assistant, a model between teacher and student in size,
is distilled from the teacher (once, through the store, on the teacher's training split with
the run's T and alpha), then teaches the student with the same soft-target loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kdrun.methods.base import MethodOptions, register_method
from kdrun.methods.kd import KD, kd_at_run_settings
from kdrun.methods.model_options import derived_model, midway_overrides


@dataclass
class TAKDOptions(MethodOptions):
    name: str = "takd"
    # Overrides of the run's teacher config; None = a model halfway in size (midway_overrides).
    assistant: dict[str, Any] | None = None


def assistant_config(cfg):
    opts = TAKD.options(cfg.method)
    over = opts.assistant
    if over is None:
        over = midway_overrides(cfg.teacher, cfg.student)
    return derived_model(cfg.teacher, over, "method.assistant")


@register_method("takd")
class TAKD(KD):
    """KD from a teacher assistant that was itself distilled from the teacher."""

    # its assistant is distilled from a live teacher on the teacher's rows
    cross_view = False
    accepts_unlabelled = False  # the assistant trains on the student's labelled rows

    Options = TAKDOptions

    @classmethod
    def check_config(cls, cfg) -> None:
        assistant_config(cfg)

    @classmethod
    def build(cls, cfg, ctx):
        teacher = ctx.teacher()
        distill = kd_at_run_settings(cfg)
        assistant = ctx.model(assistant_config(cfg), "assistant", teacher=teacher, distill=distill)
        return cls(ctx.new_student(), assistant, cfg.T, cfg.alpha)

    def extra_metrics(self, ctx) -> dict[str, Any]:
        return {"extra_models": {"assistant": ctx.reports["assistant"].as_dict()}}
