"""Evaluation of a small training set (synthetic or a random real subset) by training fresh
networks on it with the one training loop (``kdrun.engine.fit``).

Protocol of DC's ``evaluate_synset`` (VICO-UoE/DatasetCondensation utils.py): SGD, momentum
0.9, weight decay 5e-4, lr x0.1 after half the epochs, a fixed number of epochs, the final
network tested (no validation split: a 10-image set has none to spare, and selecting on the
real validation split would leak real data into "synthetic only"). Each image gets its own
DSA draw per batch when ``eval_dsa`` (DM evaluates with DSA; without it tiny sets overfit).
With soft labels the net learns from the stored teacher logits with the run's KD loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from kdrun.condense.augment import dsa
from kdrun.config import TrainConfig
from kdrun.data import DataBundle
from kdrun.engine import accuracy, fit, predict
from kdrun.methods.base import Distiller
from kdrun.methods.losses import kd_loss


class SmallSetLearner(Distiller):
    """Hard labels (cross-entropy) or fixed soft labels (the KD loss on stored teacher logits),
    with per-image augmentation drawn from the learner's own generator."""

    cacheable = False

    def __init__(self, student: nn.Module, ops: list[str], seed: int, T: float, alpha: float):
        super().__init__(student)
        self.ops, self.T, self.alpha = ops, T, alpha
        self.gen = torch.Generator().manual_seed(seed)

    def forward(self, x, y, idx, teacher_out):
        logits = self.student(dsa(x, self.ops, self.gen, siamese=False))
        if teacher_out is None:
            return logits, {"hard": F.cross_entropy(logits.float(), y)}
        return logits, kd_loss(logits, teacher_out, y, self.T, self.alpha)


@dataclass
class EvalSpec:
    """How every evaluation net of a run is trained."""

    epochs: int
    lr: float
    batch_size: int
    ops: list[str]
    T: float
    alpha: float
    eval_batch_size: int = 1024

    def recipe(self) -> TrainConfig:
        return TrainConfig(
            epochs=self.epochs,
            batch_size=self.batch_size,
            optimizer="sgd",
            lr=self.lr,
            momentum=0.9,
            weight_decay=5e-4,
            schedule="step",
            milestones=[self.epochs // 2],
            gamma=0.1,
        )


def train_and_test(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    data: DataBundle,
    spec: EvalSpec,
    seed: int,
    soft_logits: torch.Tensor | None = None,
) -> float:
    """Train ``model`` (fresh) on (x, y) [with soft labels]; its test accuracy at the end."""
    bundle = data.training_split("small", x.detach(), y)
    learner = SmallSetLearner(model, spec.ops, seed, spec.T, spec.alpha)
    res = fit(
        learner,
        bundle,
        spec.recipe(),
        stage="eval",
        seed=seed,
        train_idx=bundle.student_idx,
        val_idx=bundle.student_val_idx,
        teacher_cache=None if soft_logits is None else soft_logits.detach(),
    )
    model.load_state_dict(res.last_state)
    return accuracy(predict(model, data.x_test, spec.eval_batch_size), data.y_test)


def random_real_subset(data: DataBundle, ipc: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``ipc`` distinct random training images per class (the baseline a synthetic set must
    beat)."""
    gen = torch.Generator().manual_seed(seed)
    y = data.y_train
    picks = []
    for c in range(data.num_classes):
        rows = torch.nonzero(y == c).flatten()
        picks.append(rows[torch.randperm(len(rows), generator=gen)[:ipc].to(rows.device)])
    idx = torch.cat(picks)
    return data.x_train[idx], y[idx]
