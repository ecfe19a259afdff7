"""The Distiller interface shared by every method, and the method registry.

A Distiller wraps the student and whatever it learns from (teachers, adapters, memory
banks). ``forward`` returns the student's logits and a dict of *named, already weighted*
losses; the training loop sums them and logs each part. Teachers are frozen: kept in eval
mode and excluded from the optimiser.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar

import torch
from omegaconf import DictConfig
from torch import nn

from kdrun.config.options import typed_options
from kdrun.engine.loop import planned_steps
from kdrun.methods.losses import hard_ce

METHODS: dict[str, type[Distiller]] = {}


Named = TypeVar("Named", bound=type)


def registrar(table: dict[str, Named]) -> Callable[[str], Callable[[Named], Named]]:
    """A ``@register(name)`` decorator that files a class in ``table`` and sets its ``name``
    (the method registries here, the condensers in kdrun.condense.matching)."""

    def register(name: str) -> Callable[[Named], Named]:
        def deco(cls: Named) -> Named:
            cls.name = name
            table[name] = cls
            return cls

        return deco

    return register


register_method = registrar(METHODS)


@dataclass
class MethodOptions:
    """Knobs shared by every method; subclasses add their own fields."""

    name: str = "kd"


class BuildContext(Protocol):
    """What the job offers a method (kdrun.experiments.context.JobContext implements it):
    while it is built (``build``), and after training (``extra_metrics``)."""

    cfg: DictConfig
    data: Any  # the run's DataBundle: shapes, sizes, labels (e.g. CRD sizes its memory by it)
    run_dir: Path  # the run directory (a method's own files, e.g. data-free's images)
    reports: dict[str, Any]  # role -> StageReport of each model trained so far (.as_dict())
    history: list[dict[str, Any]]  # the job's history.csv rows so far

    def new_student(self, seed: int | None = None) -> nn.Module:
        """The student with the run's shared initial weights (same as the baseline's); with
        ``seed``, a fresh student initialised from that seed."""

    def teacher(self) -> nn.Module:
        """The run's teacher, trained once (or loaded from the store / a checkpoint), frozen."""

    def model(
        self,
        model_cfg: Any,
        role: str,
        teacher: nn.Module | None = None,
        seed: int | None = None,
        distill: Callable[[nn.Module, nn.Module], Distiller] | None = None,
    ) -> nn.Module:
        """Any other model (an assistant, an extra teacher), trained once through the store:
        on hard labels, or distilled from ``teacher`` by ``distill(model, teacher)`` (the
        method's own loss, e.g. KD at the run's T and alpha); ``seed`` (default: the run's)
        sets its init and batch order."""

    def teacher_samples(
        self,
        teacher: nn.Module,
        opts: Any,
        sample: Callable[[nn.Module, torch.Tensor, Any, int, int], torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sequences ``sample(teacher, windows, opts, batch_size, seed)`` draws from the
        teacher once (through the store) for the transfer set's windows, and each training
        row's sample index."""

    def evaluate(self, model: nn.Module) -> torch.Tensor:
        """The model's outputs on the test split."""


# Run-level knobs: one place for each, the top level. A method never has its own copy.
RUN_LEVEL = {
    "T": "the temperature is the top-level T for every method",
    "alpha": "alpha is the top-level weight of KD's soft term",
}


def unknown_option(method: str, key: str, known: list[str]) -> str:
    """The one-line error for method.<key>, with the closest option (as for top-level keys)."""
    if key in RUN_LEVEL:
        return (
            f"unknown config key 'method.{key}' for method '{method}': {RUN_LEVEL[key]}; "
            f"write {key}=... instead of method.{key}=..."
        )
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f"did you mean 'method.{close[0]}'? " if close else ""
    return (
        f"unknown config key 'method.{key}' for method '{method}'; {hint}"
        f"its options are: {', '.join(known)}"
    )


def epoch_steps(cfg: DictConfig, ctx: BuildContext) -> int:
    """Optimiser steps per student epoch, counted as the training loop counts them
    (engine.planned_steps: batches of the student's rows, capped by
    ``student.train.steps_per_epoch`` when set), so per-epoch schedules keep their length."""
    recipe = cfg.student.train
    per_run = planned_steps(recipe, transfer_rows(ctx.data))
    return max(1, per_run // max(1, recipe.epochs))


def transfer_rows(data: Any) -> int:
    """Rows of the distilled student's transfer set: the labelled ``student_idx`` and, with
    dataset.unlabelled_transfer, the unlabelled rest."""
    extra = getattr(data, "unlabelled_idx", None)
    return len(data.student_idx) + (0 if extra is None else len(extra))


def freeze(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class Distiller(nn.Module):
    name: ClassVar[str] = "?"
    Options: ClassVar[type] = MethodOptions
    # True when everything the method needs from the teacher is ``teacher_outputs(x)`` per
    # sample: then the pipeline may compute it once for the whole transfer set and replay it.
    cacheable: ClassVar[bool] = True
    # False for methods that learn without a pre-trained teacher (e.g. mutual learning): the
    # pipeline then trains no teacher and reports ``teacher: null``.
    needs_teacher: ClassVar[bool] = True
    # False for methods that need the teacher's forward pass on the student's own batch
    # (features, relations, models trained on the teacher's rows): they cannot work when the
    # teacher and the student read different views of each example (kdrun.data.views).
    cross_view: ClassVar[bool] = True
    # True when the labels enter the method's loss only through hard_ce (which skips an
    # unlabelled image): then it may learn from dataset.unlabelled_transfer's images. False
    # for one that uses them elsewhere (a target-class mask, class-aware negatives, models it
    # trains on labels): the job is refused before anything trains.
    accepts_unlabelled: ClassVar[bool] = False

    def __init__(self, student: nn.Module, teacher: nn.Module | None = None):
        super().__init__()
        self.student = student
        self.teacher = freeze(teacher) if teacher is not None else None

    def train(self, mode: bool = True) -> Distiller:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # a frozen teacher keeps its BN statistics and no dropout
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        frozen = {id(p) for p in self.teacher.parameters()} if self.teacher is not None else set()
        return [p for p in self.parameters() if id(p) not in frozen and p.requires_grad]

    # How the run table names the baseline and the distilled student for this method.
    stage_labels: ClassVar[dict[str, str]] = {}

    def transfer_set(self, data: Any, batch_size: int) -> Any:
        """The bundle the student's loop iterates over: the run's data (its ``student_idx``
        rows, and with dataset.unlabelled_transfer the unlabelled rest); a method that brings
        its own images (data-free) returns a stand-in."""
        view = getattr(data, "transfer_view", None)  # image bundles; text and triples: as is
        return view() if view is not None else data

    def real_images_seen(self, data: Any) -> int:
        """Distinct real training images the student learned from (metrics.json)."""
        return transfer_rows(data)

    def effective(self) -> dict[str, Any]:
        """The run-level knobs this method actually used (metrics.json ``effective``, the run
        header, the sweep table): None for one it does not use."""
        return {"T": getattr(self, "T", None), "alpha": getattr(self, "alpha", None)}

    def epoch_metrics(self) -> dict[str, Any]:
        """Extra columns of this epoch's history.csv row (e.g. a learned temperature)."""
        return {}

    def accuracy_targets(self, y: torch.Tensor) -> torch.Tensor:
        """The labels the last ``forward``'s logits are scored against for ``train_acc``: the
        batch's own; a method that makes its images (data-free) returns the teacher's."""
        return y

    def teacher_output_spec(self) -> dict[str, Any] | None:
        """What ``teacher_outputs`` depends on besides the teachers' weights and the data: the
        key of the teacher-output cache. None: nothing to cache (not cacheable, no teacher).
        A method whose outputs depend on a knob (a temperature, an averaging rule) names it."""
        if not self.cacheable or self.teacher is None:
            return None
        return {"outputs": "logits"}

    @torch.no_grad()
    def teacher_outputs(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor] | None:
        """Per-sample teacher outputs the pipeline may cache: a tensor or a dict of tensors
        whose first dim is the sample."""
        return None if self.teacher is None else self.teacher(x)

    def forward(
        self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, teacher_out: torch.Tensor | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    # ---- configuration -------------------------------------------------------------
    @classmethod
    def options(cls, method_cfg: DictConfig) -> Any:
        """Merge the method's YAML onto its typed options: unknown keys and bad types fail."""
        return typed_options(
            "method",
            f"method '{cls.name}'",
            cls.Options,
            method_cfg,
            unknown=lambda key, known: unknown_option(cls.name, key, known),
        )

    @classmethod
    def accepts_views(cls, cfg: DictConfig) -> bool:
        """Whether the teacher may read another view than the student: it is then seen only
        through ``teacher_outputs`` on its own view, cached per row and replayed."""
        return cls.cross_view and cls.cacheable

    @classmethod
    def check_config(cls, cfg: DictConfig) -> None:
        cls.options(cfg.method)

    @classmethod
    def build(cls, cfg: DictConfig, ctx: BuildContext) -> Distiller:
        raise NotImplementedError


class HardLabels(Distiller):
    """Plain cross-entropy on the ground truth: how teachers and baselines are trained."""

    name = "ce"

    def forward(self, x, y, idx, teacher_out):
        logits = self.student(x)
        return logits, {"hard": hard_ce(logits, y)}
