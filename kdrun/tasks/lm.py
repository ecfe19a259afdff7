"""Causal language modelling: next-token prediction on a text corpus (kdrun.data.text).

Metrics: cross-entropy per token (``*_loss``, nats), perplexity ``exp(loss)``, and bits per byte
(``*_bpb`` = loss / ln 2 / bytes per token: comparable across tokenizers); models are selected
on ``val_bpb`` (lower is better). A student is compared with the teacher on the test split by
top-1 next-token agreement and KL(teacher || student) per token, the teacher's side kept as
its top-``REFERENCE_TOP_K`` summary plus tail mass (the lower bound of
kdrun.methods.lm_losses; exact when the vocabulary is no larger).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from kdrun.data import TextData, bits_per_byte, load_text_data
from kdrun.engine import Selection, autocast_context
from kdrun.engine.evaluate import module_device
from kdrun.methods import LM_METHODS, LMHardLabels
from kdrun.methods.lm_losses import IGNORE, TopK, coarse_student, kl, token_ce, topk_of
from kdrun.models import build_model
from kdrun.tasks.base import Column, register_task

REFERENCE_TOP_K = 64
_LOGITS_PER_BATCH = 2**22  # evaluation batches hold at most this many logits (16 MB fp32)


@torch.no_grad()
def _batches(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int, amp: str
) -> Iterator[tuple[torch.Tensor, torch.Tensor, slice]]:
    """(logits, targets, rows) per evaluation batch, in eval mode."""
    was_training = model.training
    model.eval()
    device = module_device(model, x.device)
    rows = max(1, min(batch_size, _LOGITS_PER_BATCH // max(1, x.shape[1] * _vocab(model))))
    try:
        for i in range(0, len(x), rows):
            sl = slice(i, i + rows)
            with autocast_context(device, amp):
                logits = model(x[sl].to(device)).float()
            yield logits, y[sl].to(device).long(), sl
    finally:
        model.train(was_training)


def _vocab(model: nn.Module) -> int:
    return int(getattr(model, "vocab_size", 0) or 50_000)


def split_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, bs: int, amp: str) -> float:
    """Mean next-token cross-entropy (nats per token) over the windows (x, y), over the
    tokens that carry a loss (not IGNORE), as ``test_outcomes`` weights them."""
    total, count = 0.0, 0
    for logits, t, _ in _batches(model, x, y, bs, amp):
        n = int((t != IGNORE).sum())  # token_ce is the mean over these
        total += float(token_ce(logits, t)) * n
        count += n
    return total / max(count, 1)


class LanguageModelling:
    name = "lm"
    methods = LM_METHODS
    selection = Selection("val_bpb", higher_is_better=False)
    headline = "test_bpb"
    headline_name = "bits per byte"
    inputs = "tokens"
    higher_is_better = False
    outcomes = "windows"  # test_outcomes: each test window's bpb share (kdrun.report.evidence)
    columns = (
        Column("test bpb", "test_bpb", "num"),
        Column("last ep.", "last_test_bpb", "num"),
        Column("test ppl", "test_ppl", "num2"),
        Column("val bpb", "val_bpb", "num"),
        Column("agree", "agreement"),
        Column("KL to T", "kl_to_teacher", "num"),
    )

    def gain_text(self, gain: float) -> str:
        return f"KD gain (baseline − distilled test bits per byte): {gain:+.4f} bpb"

    def load_data(self, ds_cfg: DictConfig, hints: Any = None) -> TextData:
        return load_text_data(ds_cfg)

    def build_model(self, model_cfg: DictConfig, data: TextData) -> nn.Module:
        return build_model(model_cfg, data.in_shape, data.num_classes)

    def hard_distiller(self, model: nn.Module) -> nn.Module:
        return LMHardLabels(model)

    def val_score(
        self, model: nn.Module, data: TextData, val_idx: torch.Tensor, batch_size: int, amp: str
    ) -> float:
        x, y = data.x_val.index_select(0, val_idx), data.y_val.index_select(0, val_idx)
        loss = split_loss(model, x, y, batch_size, amp)
        return bits_per_byte(loss, data.bytes_per_token["val"])

    def test_metrics(self, model: nn.Module, data: TextData, batch_size: int, amp: str) -> dict:
        loss = split_loss(model, data.x_test, data.y_test, batch_size, amp)
        return {
            "test_loss": loss,
            "test_ppl": math.exp(min(loss, 50.0)),
            "test_bpb": bits_per_byte(loss, data.bytes_per_token["test"]),
        }

    def teacher_reference(
        self, teacher: nn.Module, data: TextData, batch_size: int, amp: str
    ) -> dict[str, torch.Tensor]:
        parts = [
            topk_of(logits, 1.0, REFERENCE_TOP_K).pack(data.num_classes)
            for logits, _, _ in _batches(teacher, data.x_test, data.y_test, batch_size, amp)
        ]
        return {k: torch.cat([p[k].cpu() for p in parts]) for k in parts[0]}

    def compare(
        self, model: nn.Module, data: TextData, reference: Any, batch_size: int, amp: str
    ) -> dict:
        if reference is None:
            return {"agreement": None, "kl_to_teacher": None}
        hits, kl_sum, count = 0.0, 0.0, 0
        for logits, t, sl in _batches(model, data.x_test, data.y_test, batch_size, amp):
            ref = TopK.unpack({k: v[sl].to(logits.device) for k, v in reference.items()})
            scored = t != IGNORE  # positions without a target are not compared
            hits += float(((logits.argmax(-1) == ref.idx[..., 0]) & scored).sum())
            student = coarse_student(logits.log_softmax(-1), ref.idx)
            kl_sum += float((kl(ref.coarse(), student) * scored).sum())
            count += int(scored.sum())
        return {"agreement": hits / max(count, 1), "kl_to_teacher": kl_sum / max(count, 1)}

    def test_outcomes(self, model: nn.Module, data: TextData, batch_size: int, amp: str):
        """Per test window: its share of the test bits per byte, scaled so that their mean
        is ``test_bpb`` (window i's summed token loss × windows / all tokens; windows of
        equal length: simply each window's own bits per byte)."""
        sums, counts = [], []
        for logits, t, _ in _batches(model, data.x_test, data.y_test, batch_size, amp):
            ce = F.cross_entropy(
                logits.flatten(0, -2), t.flatten(), ignore_index=IGNORE, reduction="none"
            ).view(t.shape)
            sums.append(ce.sum(1).double().cpu())
            counts.append((t != IGNORE).sum(1).cpu())
        total, n = torch.cat(sums), torch.cat(counts)
        scale = len(total) / max(int(n.sum()), 1)
        return total * scale / math.log(2) / data.bytes_per_token["test"]

    def test_logits(self, model: nn.Module, data: TextData, batch_size: int, amp: str):
        outs = [lg.cpu() for lg, _, _ in _batches(model, data.x_test, data.y_test, batch_size, amp)]
        return torch.cat(outs)


LM = register_task(LanguageModelling())
