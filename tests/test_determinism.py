"""Same config and seed on CPU => the same numbers, in another process, from scratch."""

from __future__ import annotations

import csv
import importlib.metadata
from pathlib import Path

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


# What may differ between two runs of one command: clocks, paths, where a model came from.
_VOLATILE = {
    "run_dir",
    "started_at",
    "finished_at",
    "wall_seconds",
    "train_seconds",
    "command",
    "config",  # holds store_dir and the run directory
    "from_cache",
    "from_store",
    "source",
    "threads_governor",
    "baseline_aside",
}


def _results(run_dir: Path) -> tuple[dict, list[dict]]:
    """metrics.json without times and provenance; history.csv without its time columns."""

    def strip(node):
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k not in _VOLATILE}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    with open(run_dir / "history.csv") as f:
        rows = [
            {k: v for k, v in r.items() if k not in ("seconds", "from_store")}
            for r in csv.DictReader(f)
        ]
    return strip(read_json(run_dir / "metrics.json")), rows


def test_the_default_command_repeats_bit_for_bit_fresh_or_warm(tmp_path):
    """The default thread setting (auto): the same command twice from fresh stores, then once
    on a warm store, gives identical numbers (metrics.json and history.csv, times aside)."""
    args = ("experiment=smoke", "dataset=digits", "seed=3")
    runs = []
    for name, store in (("a", "sa"), ("b", "sb"), ("warm", "sa")):
        run = tmp_path / name
        r = cli(*args, f"store_dir={tmp_path / store}", f"hydra.run.dir={run}", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        runs.append(_results(run))
    m = read_json(tmp_path / "warm" / "metrics.json")
    assert m["from_store"]["teacher"] and m["from_store"]["baseline"]  # warm: from the store
    assert runs[0][0]["threads"] == m["threads"]  # recorded, per stage
    assert runs[0] == runs[1] == runs[2]
