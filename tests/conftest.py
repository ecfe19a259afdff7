"""Shared fixtures: run the CLI in a subprocess against *this* checkout's code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")

needs_fashion = pytest.mark.skipif(
    not (FASHION_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason="apt-get install dataset-fashion-mnist",
)


# The data fingerprints' hash cache of every run the tests start: never the user's ~/.cache
DIGEST_CACHE = Path(tempfile.mkdtemp(prefix="kdrun-digests-")) / "digests.json"
os.environ.setdefault("KDRUN_DIGEST_CACHE", str(DIGEST_CACHE))  # in-process runs too


def kdrun_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["KDRUN_DIGEST_CACHE"] = str(DIGEST_CACHE)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "2")
    env.pop("HYDRA_FULL_ERROR", None)
    env.update(extra)
    return env


@pytest.fixture
def run_kdrun(tmp_path):
    """run_kdrun(*overrides, run_dir=None) -> CompletedProcess; store and outputs in tmp_path."""

    def run(
        *args: str,
        run_dir: Path | None = None,
        cwd: Path | None = None,
        timeout: int = 600,
        store: Path | None = None,
        env: dict[str, str] | None = None,
    ):
        argv = list(args)
        is_sub = bool(argv) and not argv[0].startswith("-") and "=" not in argv[0]
        if not is_sub:
            if not any(a.startswith("store_dir=") for a in argv):
                argv.append(f"store_dir={store or tmp_path / 'store'}")
            if run_dir is not None:
                argv.append(f"hydra.run.dir={run_dir}")
        cmd = [sys.executable, "-m", "kdrun", *argv]
        return subprocess.run(
            cmd,
            cwd=cwd or tmp_path,
            env=kdrun_env(**(env or {})),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


_pytest_approx = pytest.approx


def _contains_tensor(value: object) -> bool:
    if isinstance(value, torch.Tensor):
        return True
    if isinstance(value, (list, tuple)):
        return any(_contains_tensor(v) for v in value)
    if isinstance(value, dict):
        return any(_contains_tensor(v) for v in value.values())
    return False


def _numbers_only_approx(expected, *args, **kwargs):
    """pytest.approx that refuses torch tensors on every pytest version: pytest 9 raises
    "iteration over a 0-d tensor" for them while older versions passed, so a test that hands
    approx a tensor fails here whichever pytest is installed. Compare .item() / .tolist()."""
    if _contains_tensor(expected):
        raise TypeError("pytest.approx was given a torch.Tensor: compare .item() / .tolist()")
    return _pytest_approx(expected, *args, **kwargs)


pytest.approx = _numbers_only_approx
