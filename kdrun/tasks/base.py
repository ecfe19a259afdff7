"""The Task seam: what a kind of learning problem supplies to the one pipeline and loop.

Image classification is one task (``kdrun.tasks.classify``). Another (language modelling, say)
registers beside it and is chosen by its data set (``DatasetSpec.task``), so the pipeline and
the training loop never branch on a task's name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch
from omegaconf import DictConfig
from torch import nn

from kdrun.errors import ConfigError


class Task(Protocol):
    name: str

    def load_data(self, ds_cfg: DictConfig) -> Any:
        """The data bundle (on the CPU) the loop trains on: splits, index sets, shapes."""

    def build_model(self, model_cfg: DictConfig, data: Any) -> nn.Module:
        """A model from the registry, sized for this data (input shape, classes, vocabulary)."""

    def hard_distiller(self, model: nn.Module) -> nn.Module:
        """The Distiller that trains ``model`` on ground truth alone (teachers, baselines)."""

    def val_score(
        self, model: nn.Module, data: Any, val_idx: torch.Tensor, batch_size: int, amp: str
    ) -> float:
        """Model selection on validation: higher is better (e.g. accuracy, -bits per byte)."""

    def test_logits(self, model: nn.Module, data: Any, batch_size: int, amp: str) -> torch.Tensor:
        """The model's outputs on the whole test split (what test metrics are computed from)."""

    def test_score(self, logits: torch.Tensor, data: Any) -> float:
        """The headline test number of the run table (accuracy for classification)."""


TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    TASKS[task.name] = task
    return task


def task_named(name: str) -> Task:
    if name not in TASKS:
        raise ConfigError(f"unknown task '{name}'; known tasks: {', '.join(sorted(TASKS))}")
    return TASKS[name]


ValScore = Callable[[nn.Module, Any, torch.Tensor, int, str], float]
