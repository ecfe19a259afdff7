"""Same config and seed on CPU => the same numbers, in another process, from scratch."""

from __future__ import annotations

import importlib.metadata

import pytest
import torch

from tests.conftest import read_json
from tests.reliability_util import RECIPE, cli, numbers, reference_run

pytestmark = pytest.mark.slow


def test_two_runs_from_scratch_give_identical_metrics(tmp_path):
    ref_dir, _ = reference_run(*RECIPE)
    run_dir = tmp_path / "run"
    # A store of its own: teacher and baseline are trained again, not loaded.
    r = cli(*RECIPE, f"store_dir={tmp_path / 'store'}", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    m = read_json(run_dir / "metrics.json")
    assert m["teacher"]["from_cache"] is False and m["baseline"]["from_cache"] is False
    assert numbers(run_dir) == numbers(ref_dir)


def test_seed_and_versions_are_recorded():
    ref_dir, _ = reference_run(*RECIPE)
    m = read_json(ref_dir / "metrics.json")
    assert m["seed"] == 0 and m["config"]["seed"] == 0
    v = m["versions"]
    assert v["torch"] == torch.__version__
    assert v["numpy"] == importlib.metadata.version("numpy")
    assert v["torchvision"] == importlib.metadata.version("torchvision")
    assert {"kdrun", "hydra", "python", "platform"} <= set(v)
