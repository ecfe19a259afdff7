"""Helpers shared by the reliability tests: run the CLI, wait for files, compare results."""

from __future__ import annotations

import atexit
import csv
import hashlib
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tests.conftest import kdrun_env, read_json

# The smoke recipe with epochs long enough to be stopped part-way (~1 s of training).
RECIPE = (
    "experiment=smoke",
    "student.train.epochs=4",
    "student.train.batch_size=16",
    "runtime.num_threads=1",
    "runtime.deterministic=true",  # deterministic kernels (a no-op on CPU; needed on CUDA)
)

# Numbers that must not depend on timing, process or interruption.
STAGE_KEYS = (
    "test_acc",
    "val_acc",
    "last_test_acc",
    "best_epoch",
    "params",
    "agreement",
    "kl_to_teacher",
    "per_class_acc",
)
VOLATILE_COLUMNS = ("seconds", "from_store")


def kdrun_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "kdrun", *args]


def cli(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: int = 300):
    """Run `kdrun ARGS` to completion; returns the CompletedProcess (text)."""
    return subprocess.run(
        kdrun_cmd(*args),
        cwd=cwd,
        env=kdrun_env(**(env or {})),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start(*args: str, cwd: Path, log: Path) -> subprocess.Popen:
    """Start `kdrun ARGS` in the background, stdout+stderr into ``log``."""
    f = open(log, "w")  # noqa: SIM115 - closed with the process by the OS
    return subprocess.Popen(
        kdrun_cmd(*args), cwd=cwd, env=kdrun_env(), stdout=f, stderr=subprocess.STDOUT, text=True
    )


def wait_for(cond: Callable[[], bool], proc: subprocess.Popen | None = None, limit: float = 120):
    """Poll (no fixed sleeps) until cond() holds; fail if proc ends first or time runs out."""
    t0 = time.monotonic()
    while not cond():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process ended (rc={proc.returncode}) before the condition")
        if time.monotonic() - t0 > limit:
            raise AssertionError("timed out waiting")
        time.sleep(0.005)


def numbers(run_dir: Path) -> dict:
    """Everything a run measured, minus timings and provenance flags."""
    m = read_json(run_dir / "metrics.json")
    out = {"kd_gain": m["kd_gain"], "data": m["data"], "seed": m["seed"]}
    for stage in ("teacher", "baseline", "student"):
        if m.get(stage):
            out[stage] = {k: m[stage].get(k) for k in STAGE_KEYS}
    with open(run_dir / "history.csv") as f:
        out["history"] = [
            {k: v for k, v in row.items() if k not in VOLATILE_COLUMNS} for row in csv.DictReader(f)
        ]
    return out


def digest(*roots: Path) -> dict[str, str]:
    """sha256 of every result file under the roots (logs, locks and Hydra's copies excluded)."""
    out = {}
    for root in roots:
        for p in sorted(Path(root).rglob("*")):
            if p.is_file() and p.suffix not in (".lock", ".log") and ".hydra" not in p.parts:
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


_REFERENCE: dict[tuple[str, ...], tuple[Path, Path]] = {}


def reference_run(*args: str) -> tuple[Path, Path]:
    """One uninterrupted run of ``args`` per test session, shared by the test files that
    compare against it: (run_dir, store)."""
    if args not in _REFERENCE:
        base = Path(tempfile.mkdtemp(prefix="kdrun-reference-"))
        atexit.register(shutil.rmtree, base, True)
        run_dir, store = base / "run", base / "store"
        r = cli(*args, f"store_dir={store}", f"hydra.run.dir={run_dir}", cwd=base)
        assert r.returncode == 0, r.stderr
        _REFERENCE[args] = (run_dir, store)
    return _REFERENCE[args]
