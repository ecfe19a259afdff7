"""Image (or any tensor) classification: the task every built-in image data set belongs to."""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from kdrun.data import DataBundle, LoadHints, load_data
from kdrun.engine import Selection, accuracy, predict, val_accuracy
from kdrun.methods import METHODS
from kdrun.methods.base import HardLabels
from kdrun.methods.losses import kl_soft
from kdrun.models import build_model, with_weights
from kdrun.tasks.base import Column, register_task


def per_class_accuracy(pred: torch.Tensor, y: torch.Tensor, num_classes: int) -> list[float]:
    out = []
    for c in range(num_classes):
        m = y == c
        out.append(float((pred[m] == c).float().mean()) if m.any() else float("nan"))
    return out


def agreement(logits: torch.Tensor, t_logits: torch.Tensor | None) -> float | None:
    """Top-1 agreement with the teacher's test outputs (None without a teacher)."""
    if t_logits is None:
        return None
    return float((logits.argmax(1) == t_logits.argmax(1)).float().mean())


class Classification:
    name = "classify"
    methods = METHODS
    selection = Selection("val_acc", higher_is_better=True)
    headline = "test_acc"
    headline_name = "accuracy"
    inputs = "images"
    higher_is_better = True
    outcomes = "correct"  # test_outcomes: right/wrong per image (kdrun.report.evidence)
    columns = (
        Column("test acc", "test_acc"),
        Column("last ep.", "last_test_acc"),
        Column("val acc", "val_acc"),
        Column("agree", "agreement"),
    )

    def gain_text(self, gain: float) -> str:
        return f"KD gain (distilled − baseline test acc): {100 * gain:+.2f} points"

    def load_data(self, ds_cfg: DictConfig, hints: LoadHints | None = None) -> DataBundle:
        return load_data(ds_cfg, "cpu", hints)

    def build_model(self, model_cfg: DictConfig, data: DataBundle) -> nn.Module:
        return with_weights(build_model(model_cfg, data.in_shape, data.num_classes), model_cfg)

    def hard_distiller(self, model: nn.Module) -> nn.Module:
        return HardLabels(model)

    val_score = staticmethod(val_accuracy)

    def test_logits(self, model: nn.Module, data: Any, batch_size: int, amp: str) -> torch.Tensor:
        return predict(model, data.x_test, batch_size, amp)

    def test_metrics(self, model: nn.Module, data: Any, batch_size: int, amp: str) -> dict:
        return {"test_acc": accuracy(self.test_logits(model, data, batch_size, amp), data.y_test)}

    def teacher_reference(self, teacher: nn.Module, data: Any, batch_size: int, amp: str) -> Any:
        return self.test_logits(teacher, data, batch_size, amp).float()

    def test_outcomes(self, model: nn.Module, data: Any, batch_size: int, amp: str):
        """Per test image: classified right (True) or wrong, in test-split order."""
        logits = self.test_logits(model, data, batch_size, amp)
        return (logits.argmax(1) == data.y_test.to(logits.device)).cpu()

    def compare(
        self, model: nn.Module, data: Any, reference: Any, batch_size: int, amp: str
    ) -> dict:
        logits = self.test_logits(model, data, batch_size, amp)
        y = data.y_test.to(logits.device)
        ref = None if reference is None else reference.to(logits.device)
        return {
            "agreement": agreement(logits, ref),
            "kl_to_teacher": None if ref is None else float(kl_soft(logits, ref, 1.0)),
            "per_class_acc": per_class_accuracy(logits.argmax(1), y, data.num_classes),
        }


CLASSIFY = register_task(Classification())
