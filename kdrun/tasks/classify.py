"""Image (or any tensor) classification: the task every built-in data set belongs to."""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from kdrun.data import DataBundle, load_data
from kdrun.engine import accuracy, predict, val_accuracy
from kdrun.methods.base import HardLabels
from kdrun.models import build_model
from kdrun.tasks.base import register_task


class Classification:
    name = "classify"

    def load_data(self, ds_cfg: DictConfig) -> DataBundle:
        return load_data(ds_cfg, "cpu")

    def build_model(self, model_cfg: DictConfig, data: DataBundle) -> nn.Module:
        return build_model(model_cfg, data.in_shape, data.num_classes)

    def hard_distiller(self, model: nn.Module) -> nn.Module:
        return HardLabels(model)

    val_score = staticmethod(val_accuracy)

    def test_logits(self, model: nn.Module, data: Any, batch_size: int, amp: str) -> torch.Tensor:
        return predict(model, data.x_test, batch_size, amp)

    def test_score(self, logits: torch.Tensor, data: DataBundle) -> float:
        return accuracy(logits, data.y_test)


CLASSIFY = register_task(Classification())
