"""Born-again networks (Furlanello et al., ICML 2018, arXiv 1805.04770).

Generation 1 has the teacher's own architecture and is distilled from the teacher; generation
k is distilled from generation k-1, each from its own random init. The run's student is then
distilled from the last generation (with ``student`` = the teacher's architecture this is
the paper's setting; with a smaller student, the last generation is simply its teacher).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kdrun.errors import ConfigError
from kdrun.methods.base import MethodOptions, register_method
from kdrun.methods.kd import KD, kd_at_run_settings
from kdrun.methods.model_options import derived_model

SEED_STRIDE = 1000  # generation k trains from seed + 1000 k: never another run's own seed


@dataclass
class BornAgainOptions(MethodOptions):
    name: str = "born_again"
    generations: int = 1  # teacher-architecture generations before the student


@register_method("born_again")
class BornAgain(KD):
    # its generations are distilled from a live teacher on the teacher's rows
    cross_view = False
    accepts_unlabelled = False  # each generation's teacher is trained on labels

    Options = BornAgainOptions

    def __init__(self, student, teacher, T, alpha, generations: int):
        super().__init__(student, teacher, T, alpha)
        self.generations = generations

    @classmethod
    def check_config(cls, cfg) -> None:
        opts = cls.options(cfg.method)
        if opts.generations < 1:
            raise ConfigError(
                f"method.generations must be >= 1 (got {opts.generations}); use method=kd for "
                f"plain distillation from the teacher"
            )
        derived_model(cfg.teacher, {}, "teacher")

    @classmethod
    def build(cls, cfg, ctx):
        opts = cls.options(cfg.method)
        arch = derived_model(cfg.teacher, {}, "teacher")
        prev, distill = ctx.teacher(), kd_at_run_settings(cfg)
        for k in range(1, opts.generations + 1):
            seed = cfg.seed + SEED_STRIDE * k
            prev = ctx.model(arch, f"gen{k}", teacher=prev, seed=seed, distill=distill)
        return cls(ctx.new_student(), prev, cfg.T, cfg.alpha, opts.generations)

    def extra_metrics(self, ctx) -> dict[str, Any]:
        gens = {f"gen{k}": ctx.reports[f"gen{k}"].as_dict() for k in range(1, self.generations + 1)}
        return {
            "extra_models": gens,
            "generations": [
                {"generation": 0, "test_acc": ctx.reports["teacher"].test_acc},
                *(
                    {"generation": k, "test_acc": gens[f"gen{k}"]["test_acc"]}
                    for k in range(1, self.generations + 1)
                ),
            ],
        }
