"""kdrun's first answers: --help, --version, list and a typo's error, without importing torch
(torch alone takes seconds to import; bench/ measures the times, these tests the imports)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kdrun.catalog import (
    KG_METHODS,
    LM_METHODS,
    TOKEN_MODELS,
    TRIPLE_MODELS,
    experiments,
    options,
    torch_build,
)
from kdrun.cli.overview import COMMANDS

REPO = Path(__file__).resolve().parents[1]

# Runs the CLI in a fresh interpreter, then reports whether torch (or Hydra) got imported.
_PROBE = """
import sys
from kdrun.cli.main import run
code = run(sys.argv[1:])
print("exit", code)
print("torch imported:", "torch" in sys.modules)
print("hydra imported:", "hydra" in sys.modules)
"""


def cli(*args: str) -> subprocess.CompletedProcess:
    from tests.conftest import kdrun_env

    return subprocess.run(
        [sys.executable, "-c", _PROBE, *args],
        env=kdrun_env(),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )


@pytest.mark.parametrize("args", [["--help"], ["help"], ["-h"]])
def test_help_lists_every_command_and_experiment_without_torch(args):
    from kdrun.cli.commands import SUBCOMMANDS

    p = cli(*args)
    assert p.returncode == 0, p.stderr
    assert "exit 0" in p.stdout and "torch imported: False" in p.stdout
    assert "hydra imported: False" in p.stdout
    lines = p.stdout.splitlines()
    for name in SUBCOMMANDS:
        assert any(ln.startswith(f"  {name}") for ln in lines), name
    for name, summary in experiments().items():
        assert any(ln.startswith(f"  {name} ") and ln.endswith(summary) for ln in lines), name


def test_every_subcommand_has_a_help_line_and_every_experiment_a_summary():
    from kdrun.cli.commands import SUBCOMMANDS

    assert set(COMMANDS) == set(SUBCOMMANDS) | {"help"}
    summaries = experiments()
    assert set(summaries) == set(options("experiment"))
    assert all(0 < len(s) <= 100 for s in summaries.values()), summaries


def test_version_names_kdrun_torch_and_the_device_without_torch():
    p = cli("--version")
    assert p.returncode == 0, p.stderr
    assert "torch imported: False" in p.stdout
    out = p.stdout.splitlines()
    assert out[0].startswith("kdrun ") and "Hydra" not in p.stdout
    assert out[1].startswith(f"torch {torch_build()['__version__']}")
    assert out[2].startswith(("device: cpu", "device: cuda"))


def test_list_shows_experiments_without_torch():
    p = cli("list")
    assert p.returncode == 0, p.stderr
    assert "torch imported: False" in p.stdout
    assert "experiments" in p.stdout and "sweep_t_alpha" in p.stdout
    assert "digits" in p.stdout and "mlp" in p.stdout and "dkd" in p.stdout


def test_catalog_matches_the_registries():
    """kdrun list reads names from conf/ (no torch): they must be the registries' names."""
    from kdrun.data import DATASETS
    from kdrun.methods import LM_METHODS as REGISTERED_LM
    from kdrun.methods import METHODS
    from kdrun.methods.kg import KG_METHODS as REGISTERED_KG
    from kdrun.models import MODEL_INPUTS, MODELS

    assert set(options("dataset")) == set(DATASETS)
    assert set(options("student")) == set(options("teacher")) == set(MODELS)
    assert {m for m in MODELS if MODEL_INPUTS.get(m) == "tokens"} == TOKEN_MODELS
    assert {m for m in MODELS if MODEL_INPUTS.get(m) == "triples"} == TRIPLE_MODELS
    assert set(options("method")) == set(METHODS) | set(REGISTERED_LM) | set(REGISTERED_KG)
    assert LM_METHODS == set(REGISTERED_LM) and KG_METHODS == set(REGISTERED_KG)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["epochs=5"], "did you mean 'student.train.epochs' or 'teacher.train.epochs'?"),
        (["--epochs", "5"], "did you mean student.train.epochs=5 or teacher.train.epochs=5?"),
        (["lisst"], "did you mean 'kdrun list'?"),
        (["explain"], "is neither a command nor a key=value override"),
    ],
)
def test_a_typo_is_one_line_without_torch(args, needle):
    p = cli(*args)
    assert "exit 2" in p.stdout and "torch imported: False" in p.stdout
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kdrun: error: ") and needle in lines[0]


def test_the_device_line_reads_the_build():
    from kdrun.catalog import likely_device

    assert likely_device({"__version__": "2.5.0+cpu", "cuda": None, "hip": None}) == (
        "cpu (CPU-only build)"
    )
    if not Path("/proc/driver/nvidia/version").is_file():
        assert likely_device({"cuda": "12.4"}) == "cpu (no GPU driver found)"
