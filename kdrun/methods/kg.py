"""The knowledge-graph task's methods (``KG_METHODS``): training on the answers alone, KD over
each query's candidate entities, and DualDE's soft-label and structure terms
(formulas: kdrun.methods.kg_losses)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from kdrun.methods.base import Distiller, MethodOptions, registrar
from kdrun.methods.kd import KD
from kdrun.methods.kg_losses import dualde_soft, dualde_structure, hard_loss, kd_loss
from kdrun.methods.losses import standardize_logits

KG_METHODS: dict[str, type[Distiller]] = {}
register_kg_method = registrar(KG_METHODS)


class KGHardLabels(Distiller):
    """1-vs-all cross-entropy on the answers: how teachers and baselines are trained."""

    name = "ce"

    def forward(self, x, y, idx, teacher_out):
        scores = self.student(x)
        return scores, {"hard": hard_loss(scores, y)}


@register_kg_method("kd")
class KGKD(KD):
    """alpha * T^2 * KL(p_t^T || p_s^T) + (1 - alpha) * hard, over all candidate entities.
    KD's options and build; only the loss differs (PyKEEN's hard term)."""

    accepts_unlabelled = False  # a knowledge graph's answers are its labels

    def forward(self, x, y, idx, teacher_out):
        scores = self.student(x)
        if teacher_out is None:
            teacher_out = self.teacher_outputs(x)
        s, t = scores, teacher_out
        if self.logit_standardization:
            s, t = standardize_logits(s), standardize_logits(t)
        parts = kd_loss(s, t, y, self.T, self.alpha)
        if self.logit_standardization:  # the hard term always sees the raw scores
            parts["hard"] = (1.0 - self.alpha) * hard_loss(scores, y)
        return scores, parts


@dataclass
class DualDEOptions(MethodOptions):
    name: str = "dualde"
    structure_weight: float = 1.0  # weight of the structure term beside the score term
    delta: float = 1.0  # the Huber loss's threshold


@register_kg_method("dualde")
class DualDE(Distiller):
    """alpha * (Huber(scores) + structure_weight * structure) + (1 - alpha) * hard."""

    Options = DualDEOptions
    cacheable = False  # the structure term needs the answer's embedding, not only scores

    def __init__(self, student, teacher, alpha: float, structure_weight: float, delta: float):
        super().__init__(student, teacher)
        self.alpha, self.structure_weight, self.delta = alpha, structure_weight, delta

    @classmethod
    def build(cls, cfg, ctx):
        o = cls.options(cfg.method)
        return cls(ctx.new_student(), ctx.teacher(), cfg.alpha, o.structure_weight, o.delta)

    def effective(self) -> dict[str, Any]:
        return {"T": None, "alpha": self.alpha}

    def forward(self, x, y, idx, teacher_out):
        scores = self.student(x)
        st, te = self.student, self.teacher
        with torch.no_grad():
            t_scores = te(x)
            t_q, t_a = te.entity_vectors(x[:, 0]), te.entity_vectors(y)
        s_q, s_a = st.entity_vectors(x[:, 0]), st.entity_vectors(y)
        structure = dualde_structure(s_q, s_a, t_q, t_a, self.delta)
        return scores, {
            "soft": self.alpha * dualde_soft(scores, t_scores, self.delta),
            "structure": self.alpha * self.structure_weight * structure,
            "hard": (1.0 - self.alpha) * hard_loss(scores, y),
        }
