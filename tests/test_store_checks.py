"""A loaded artifact is checked against what it claims (kdrun.experiments.artifact_checks,
ArtifactStore)."""

from __future__ import annotations

import shutil

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from kdrun.config import DatasetConfig
from kdrun.data import load_data
from kdrun.experiments.artifact_checks import outputs_check, probe_positions, reference_check
from kdrun.store import ArtifactStore, CorruptArtifact, content_key
from kdrun.tasks import task_named


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


@pytest.fixture(scope="module")
def digits():
    return load_data(OmegaConf.structured(DatasetConfig(name="digits")))


def test_probe_positions_spread_over_the_rows():
    assert probe_positions(100, 5).tolist() == [0, 24, 49, 74, 99]
    assert probe_positions(3).tolist() == [0, 1, 2]


def test_outputs_check_fails_on_a_shift_a_count_or_nan():
    x = torch.randn(50, 4, generator=torch.Generator().manual_seed(0))
    lin = nn.Linear(4, 3)
    rows = torch.arange(10, 50)

    def outputs(r):
        with torch.no_grad():
            return lin(x[r])

    good = outputs(rows)
    check = outputs_check(outputs, rows, 1e-3)
    check(good)
    for bad, why in (
        (good.roll(1, 0), "differ"),
        (good[:-1], "do not match"),
        (good.clone().index_fill_(0, torch.tensor([3]), float("nan")), "NaN"),
    ):
        with pytest.raises(CorruptArtifact, match=why):
            check(bad)


def test_test_outputs_of_another_teacher_or_shifted_fail_the_reference_check(digits):
    task = task_named("classify")
    teacher = _net(0)
    stored = task.teacher_reference(teacher, digits, 1024, "off")
    check = reference_check(task, teacher, digits, "off", 1e-3)
    check(stored)  # the teacher's own test outputs pass
    other = task.teacher_reference(_net(1), digits, 1024, "off")
    for bad in (other, stored.roll(1, 0), stored[:100]):
        with pytest.raises(CorruptArtifact):
            check(bad)


def test_a_stored_entry_claiming_another_spec_is_rebuilt(tmp_path):
    store = ArtifactStore(tmp_path)
    a, b = {"teacher": "a"}, {"teacher": "b"}
    store.get_or_build("teacher_test_logits", a, lambda d: (torch.zeros(3), {}))
    # an entry copied under another key (or a colliding key) claims spec a, not b
    src = store.dir("teacher_test_logits", content_key(a))
    shutil.copytree(src, store.dir("teacher_test_logits", content_key(b)))
    assert not store.has("teacher_test_logits", b)
    art = store.get_or_build("teacher_test_logits", b, lambda d: (torch.ones(3), {}))
    assert not art.from_cache and torch.equal(art.payload, torch.ones(3))
    # numbers written alike (1 and 1.0) are the same spec
    store.get_or_build("x", {"beta": 1}, lambda d: (torch.zeros(1), {}))
    assert store.has("x", {"beta": 1.0})
