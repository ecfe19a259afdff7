"""Link prediction on a knowledge graph (kdrun.data.kg): a small embedding model taught by a
large one over each query's candidate entities.

Metrics are PyKEEN's filtered rank-based ones (RankBasedEvaluator, realistic ranks, head and
tail prediction both): MRR and Hits@1/3/10. The filter removes every other known answer of a
query: training triples (and the split's own) for validation, training and validation ones
for test. Models are selected on ``val_mrr``; the headline is ``test_mrr``. ``test_rr`` keeps
each test triple's reciprocal rank (the mean of its head and tail ones), so the distilled
student and the baseline can be compared triple by triple (``test_outcomes``: metrics.json's
``evidence``, a paired bootstrap and sign-flip test from kdrun.report.evidence).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from kdrun.data.kg import KGData, load_kg_data
from kdrun.engine import Selection, predict
from kdrun.methods.kg import KG_METHODS, KGHardLabels
from kdrun.methods.losses import kl_soft
from kdrun.models import MODELS
from kdrun.models.kg import quiet_pykeen
from kdrun.tasks.base import Column, register_task

HITS = (1, 3, 10)


def filtered_ranks(
    model: nn.Module, data: KGData, split: str, batch_size: int, rows: torch.Tensor | None = None
) -> tuple[np.ndarray, dict[str, float]]:
    """Each triple's reciprocal rank (mean of head and tail) and PyKEEN's filtered metrics
    over ``data.triples[split]`` (``rows``: a subset of its triples)."""
    from pykeen.evaluation import RankBasedEvaluator  # the kg extra, imported where used

    quiet_pykeen()

    kge = model.constrained().kge  # the constraint after the last optimiser step
    triples = data.triples[split]
    if rows is not None:
        triples = triples.index_select(0, rows.cpu())
    filters = [data.triples["train"]] + ([data.triples["valid"]] if split == "test" else [])
    ev = RankBasedEvaluator(filtered=True, clear_on_finalize=False)
    was_training = model.training
    res = ev.evaluate(
        model=kge,
        mapped_triples=triples,
        batch_size=batch_size,
        use_tqdm=False,
        additional_filter_triples=[f.to(triples.device) for f in filters],
    )
    model.train(was_training)
    per_side = [np.concatenate(ev.ranks[side, "realistic"]) for side in ("head", "tail")]
    rr = (1.0 / per_side[0] + 1.0 / per_side[1]) / 2
    metrics = {"mrr": float(res.get_metric("both.realistic.inverse_harmonic_mean_rank"))}
    for k in HITS:
        metrics[f"hits_at_{k}"] = float(res.get_metric(f"both.realistic.hits_at_{k}"))
    return rr, metrics


class LinkPrediction:
    name = "kg"
    methods = KG_METHODS
    selection = Selection("val_mrr", higher_is_better=True)
    headline = "test_mrr"
    outcomes = "scores"  # test_outcomes: each test query's reciprocal rank (report.evidence)
    headline_name = "filtered MRR"
    inputs = "triples"
    higher_is_better = True
    columns = (
        Column("test MRR", "test_mrr", "num"),
        Column("last ep.", "last_test_mrr", "num"),
        Column("H@1", "test_hits_at_1"),
        Column("H@3", "test_hits_at_3"),
        Column("H@10", "test_hits_at_10"),
        Column("val MRR", "val_mrr", "num"),
        Column("agree", "agreement"),
    )

    def gain_text(self, gain: float) -> str:
        return f"KD gain (distilled − baseline test filtered MRR): {gain:+.4f}"

    def load_data(self, ds_cfg: DictConfig, hints: Any = None) -> KGData:
        return load_kg_data(ds_cfg)

    def build_model(self, model_cfg: DictConfig, data: KGData) -> nn.Module:
        return MODELS[model_cfg.name](model_cfg, data.in_shape, data.num_classes, data=data)

    def hard_distiller(self, model: nn.Module) -> nn.Module:
        return KGHardLabels(model)

    def val_score(
        self, model: nn.Module, data: KGData, val_idx: torch.Tensor, batch_size: int, amp: str
    ) -> float:
        n = len(data.triples["valid"])
        rows = None if len(val_idx) == 2 * n else torch.unique(val_idx.cpu() % n)
        return filtered_ranks(model, data, "valid", batch_size, rows)[1]["mrr"]

    def test_metrics(self, model: nn.Module, data: KGData, batch_size: int, amp: str) -> dict:
        rr, m = filtered_ranks(model, data, "test", batch_size)
        return {**{f"test_{k}": v for k, v in m.items()}, "test_rr": [float(v) for v in rr]}

    def test_outcomes(self, model: nn.Module, data: KGData, batch_size: int, amp: str):
        """Each test query's filtered reciprocal rank (their mean is test_mrr)."""
        return filtered_ranks(model, data, "test", batch_size)[0]

    def test_logits(self, model: nn.Module, data: KGData, batch_size: int, amp: str):
        """Scores of every candidate for each test query (tail queries, then head queries)."""
        return predict(model.constrained(), data.x_test, batch_size, amp)

    def teacher_reference(self, teacher: nn.Module, data: KGData, batch_size: int, amp: str):
        return self.test_logits(teacher, data, batch_size, amp).float()

    def compare(
        self, model: nn.Module, data: KGData, reference: Any, batch_size: int, amp: str
    ) -> dict:
        if reference is None:
            return {"agreement": None, "kl_to_teacher": None}
        scores = self.test_logits(model, data, batch_size, amp).float()
        ref = reference.to(scores.device)
        return {
            "agreement": float((scores.argmax(1) == ref.argmax(1)).float().mean()),
            "kl_to_teacher": float(kl_soft(scores, ref, 1.0)),
        }


KG = register_task(LinkPrediction())
