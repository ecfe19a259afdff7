"""A stage's own augmentation switch (train.augment) overrides the data set's: Hinton et al.'s
MNIST teacher is jittered while its students see the plain images."""

from __future__ import annotations

import pytest
import torch

import kdrun.engine.loop as loop
from kdrun.config import DatasetConfig, TrainConfig
from kdrun.data import load_data
from kdrun.methods import HardLabels
from kdrun.models import MLP


def _augmented_steps(monkeypatch, dataset_augment: bool, stage_augment: bool | None) -> int:
    calls = {"n": 0}
    real = loop.augment_batch

    def counting(*a, **kw):
        calls["n"] += 1
        return real(*a, **kw)

    monkeypatch.setattr(loop, "augment_batch", counting)
    data = load_data(DatasetConfig(name="digits", augment=dataset_augment, limit_train=300))
    torch.manual_seed(0)
    recipe = TrainConfig(epochs=1, batch_size=100, augment=stage_augment)
    loop.fit(
        HardLabels(MLP(64, [16], 10, dropout=0.0)),
        data,
        recipe,
        stage="teacher",
        seed=0,
        train_idx=data.teacher_idx,
        val_idx=data.teacher_val_idx,
    )
    return calls["n"]


@pytest.mark.parametrize(
    ("dataset_augment", "stage_augment", "augmented"),
    [(False, None, False), (True, None, True), (False, True, True), (True, False, False)],
)
def test_the_stage_switch_overrides_the_data_sets(
    monkeypatch, dataset_augment, stage_augment, augmented
):
    n = _augmented_steps(monkeypatch, dataset_augment, stage_augment)
    assert (n > 0) is augmented
