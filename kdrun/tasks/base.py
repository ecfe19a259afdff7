"""The Task seam: what a kind of learning problem supplies to the one pipeline and loop.

Image classification is one task (``kdrun.tasks.classify``), causal language modelling another
(``kdrun.tasks.lm``); each registers itself and is chosen by its data set
(``DatasetSpec.task``), so the pipeline and the training loop never branch on a task's name.
A task owns: loading its data, building models for it, the hard loss, its methods, the
validation metric it selects on (and that metric's direction), its test metrics, how a model
compares with the teacher, and its columns of the run table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from omegaconf import DictConfig
from torch import nn

from kdrun.engine import Selection
from kdrun.errors import ConfigError


@dataclass(frozen=True)
class Column:
    """One column of the run table: header, metrics key, and how to show the number."""

    header: str
    key: str
    fmt: str = "pct"  # pct (0.1234 -> 12.34%) | num (4 decimals) | num2 (2 decimals)


class Task(Protocol):
    name: str
    methods: dict[str, type]  # method name -> Distiller class (the ``method=`` choices)
    selection: Selection  # validation metric and direction (val_acc up; val_bpb down)
    headline: str  # the test metric of the table and of kd_gain (test_acc, test_bpb)
    headline_name: str  # the headline in words, for labels ("accuracy", "bits per byte")
    inputs: str  # what its models read: "images" or "tokens" (models.MODEL_INPUTS)
    higher_is_better: bool  # the headline's direction: kd_gain is positive when KD helps
    outcomes: str  # what test_outcomes returns: "correct" | "windows" (kdrun.report.evidence)
    columns: tuple[Column, ...]  # per-stage columns of the run table after stage/model/params

    def gain_text(self, gain: float) -> str:
        """The run table's caption for ``kd_gain`` (in the headline's units)."""

    def load_data(self, ds_cfg: DictConfig, hints: Any = None) -> Any:
        """The data bundle (on the CPU) the loop trains on: splits, index sets, shapes.
        ``hints``: a pretrained teacher's preprocessing and the memory limit (LoadHints)."""

    def build_model(self, model_cfg: DictConfig, data: Any) -> nn.Module:
        """A model from the registry, sized for this data (input shape, classes, vocabulary)."""

    def hard_distiller(self, model: nn.Module) -> nn.Module:
        """The Distiller that trains ``model`` on ground truth alone (teachers, baselines)."""

    def val_score(
        self, model: nn.Module, data: Any, val_idx: torch.Tensor, batch_size: int, amp: str
    ) -> float:
        """The validation metric named by ``selection`` (its direction is the selection's)."""

    def test_metrics(self, model: nn.Module, data: Any, batch_size: int, amp: str) -> dict:
        """Every test number of one model, the headline among them."""

    def teacher_reference(self, teacher: nn.Module, data: Any, batch_size: int, amp: str) -> Any:
        """The teacher's test outputs students are compared with (a tensor or a dict of
        tensors with one row per test sample; stored once per teacher)."""

    def compare(
        self, model: nn.Module, data: Any, reference: Any, batch_size: int, amp: str
    ) -> dict:
        """Test numbers of ``model`` relative to the teacher's ``reference`` (agreement, KL
        to the teacher, ...); with ``reference`` None, those that need no teacher."""

    def test_outcomes(self, model: nn.Module, data: Any, batch_size: int, amp: str) -> Any:
        """One number per test item, named by ``outcomes`` (right/wrong per image: "correct";
        a window's share of the test bpb: "windows"): what pairs two models' results item
        by item (kdrun.report.evidence.paired_evidence)."""


TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    TASKS[task.name] = task
    return task


def task_named(name: str) -> Task:
    if name not in TASKS:
        raise ConfigError(f"unknown task '{name}'; known tasks: {', '.join(sorted(TASKS))}")
    return TASKS[name]


ValScore = Callable[[nn.Module, Any, torch.Tensor, int, str], float]
