"""Interrupted runs resume exactly; reruns of finished work are no-ops; sweeps finish on rerun."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest
import torch

from kdrun.config import DatasetConfig, TrainConfig
from kdrun.data import load_data
from kdrun.engine import fit
from kdrun.errors import Interrupted
from kdrun.methods import HardLabels
from kdrun.models import MLP
from tests.conftest import read_json
from tests.reliability_util import RECIPE, cli, digest, numbers, reference_run, start, wait_for

pytestmark = pytest.mark.slow


# ---------------------------------------------------------------- the loop itself, in-process


def _fit(ckpt: Path | None, stop_after: int | None = None, init_seed: int = 0):
    torch.manual_seed(init_seed)
    data = load_data(DatasetConfig(name="digits", augment=True, crop_padding=1), "cpu")
    model = MLP(64, [32], 10, dropout=0.3)  # dropout and augmentation both draw random numbers
    calls = {"n": 0}

    def should_stop() -> bool:
        calls["n"] += 1
        return stop_after is not None and calls["n"] > stop_after

    recipe = TrainConfig(epochs=3, batch_size=64, lr=0.01)
    return fit(
        HardLabels(model),
        data,
        recipe,
        stage="student",
        seed=0,
        train_idx=data.student_idx,
        val_idx=data.student_val_idx,
        checkpoint=ckpt,
        fingerprint="fp",
        should_stop=should_stop,
    )


def test_stop_mid_epoch_then_resume_is_exact(tmp_path, caplog):
    ref = _fit(None)
    per_epoch = -(-len(load_data(DatasetConfig(name="digits")).student_idx) // 64)
    ckpt = tmp_path / "partial.pt"
    with pytest.raises(Interrupted, match=f"epoch 2, batch 9/{per_epoch}; checkpoint saved"):
        _fit(ckpt, stop_after=per_epoch + 9)  # should_stop is asked once before each batch
    saved = torch.load(ckpt, weights_only=True)
    assert saved["epoch"] == 1 and saved["mid"]["batch"] == 9
    caplog.set_level("INFO", logger="kdrun")
    res = _fit(ckpt, init_seed=123)  # other initial weights: the checkpoint must replace them
    assert "resuming from" in caplog.text and "batch 9" in caplog.text
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in res.history]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in ref.history]
    for k, v in ref.best_state.items():
        assert torch.equal(v, res.best_state[k]), k
    for k, v in ref.last_state.items():
        assert torch.equal(v, res.last_state[k]), k


def test_resume_false_ignores_a_checkpoint(tmp_path):
    ckpt = tmp_path / "partial.pt"
    with pytest.raises(Interrupted):
        _fit(ckpt, stop_after=30)
    torch.manual_seed(0)
    data = load_data(DatasetConfig(name="digits"), "cpu")
    res = fit(
        HardLabels(MLP(64, [32], 10, 0.0)),
        data,
        TrainConfig(epochs=1),
        stage="student",
        seed=0,
        train_idx=data.student_idx,
        val_idx=data.student_val_idx,
        checkpoint=ckpt,
        fingerprint="fp",
        resume=False,
    )
    assert res.resumed_from_epoch == 0


# ---------------------------------------------------------------- the CLI, real processes


@pytest.fixture
def reference():
    """One uninterrupted run of RECIPE per session: (run_dir, store)."""
    return reference_run(*RECIPE)


def test_sigkill_anywhere_then_rerun_matches_uninterrupted(reference, tmp_path):
    """Killed with SIGKILL (no chance to clean up) in the teacher, then in the student."""
    run_dir, store = tmp_path / "run", tmp_path / "store"
    args = [*RECIPE, f"store_dir={store}", f"hydra.run.dir={run_dir}"]
    teacher_partial = lambda: list(store.glob("teacher/*/partial.pt"))  # noqa: E731
    student_partial = run_dir / "checkpoints" / "student.partial.pt"
    resumed = []

    p = start(*args, cwd=tmp_path, log=tmp_path / "1.log")
    wait_for(lambda: bool(teacher_partial()), p)  # the teacher's first epoch-end checkpoint
    p.send_signal(signal.SIGKILL)
    p.wait()
    expect_teacher = bool(teacher_partial())  # still inside the teacher: it must resume
    p = start(*args, cwd=tmp_path, log=tmp_path / "2.log")
    wait_for(student_partial.is_file, p)
    p.send_signal(signal.SIGKILL)
    p.wait()
    log2 = (tmp_path / "2.log").read_text()
    if expect_teacher:
        assert "teacher: resuming from" in log2
        resumed.append("teacher")
    assert read_json(run_dir / "metrics.json")["status"] == "running"  # killed: no bookkeeping
    r = cli(*args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    if "student: resuming from" in r.stdout:
        resumed.append("student")
    assert resumed, "the kills came too late to test resuming"
    assert numbers(run_dir) == numbers(reference[0])
    assert not student_partial.exists()  # removed once metrics.json says completed


def test_sigint_stops_cleanly_then_resume_then_noop(reference, tmp_path):
    ref_dir, store = reference  # teacher and baseline come from the store: the student is hit
    run_dir = tmp_path / "run"
    args = [*RECIPE, f"store_dir={store}", f"hydra.run.dir={run_dir}"]
    p = start(*args, cwd=tmp_path, log=tmp_path / "1.log")
    wait_for((run_dir / "checkpoints" / "student.partial.pt").is_file, p)
    p.send_signal(signal.SIGINT)
    assert p.wait(timeout=120) == 130
    out = (tmp_path / "1.log").read_text()
    assert "Traceback" not in out
    m = read_json(run_dir / "metrics.json")
    assert m["status"] == "interrupted", out
    assert "kdrun: interrupted: student stopped at epoch" in out
    assert f"resume with: kdrun resume {run_dir}" in out
    log = (run_dir / "kdrun.log").read_text()  # the run's log holds it too
    assert "kdrun: interrupted: student stopped at epoch" in log
    assert f"resume with: kdrun resume {run_dir}" in log

    r = cli("resume", str(run_dir), cwd=tmp_path)  # from another working directory: same run
    assert r.returncode == 0, r.stderr
    assert "student: resuming from" in r.stdout
    assert numbers(run_dir) == numbers(ref_dir)

    before = digest(run_dir)
    r = cli(*args, cwd=tmp_path)  # the same command again: nothing to do
    assert r.returncode == 0 and "already completed" in r.stdout, r.stderr
    assert digest(run_dir) == before


def test_sweep_stops_on_sigterm_and_rerun_skips_completed(reference, tmp_path):
    _, store = reference
    sweep = tmp_path / "sweep"
    args = ["-m", *RECIPE, "alpha=0.5,0.9,1.0", f"store_dir={store}", f"hydra.sweep.dir={sweep}"]
    p = start(*args, cwd=tmp_path, log=tmp_path / "1.log")
    wait_for((sweep / "1" / "checkpoints" / "student.partial.pt").is_file, p)
    p.send_signal(signal.SIGTERM)  # what Slurm sends before it kills a job
    assert p.wait(timeout=120) == 130
    out = (tmp_path / "1.log").read_text()
    assert f"finish it with: kdrun resume {sweep}" in out and "Traceback" not in out
    assert read_json(sweep / "0" / "metrics.json")["status"] == "completed"
    assert read_json(sweep / "1" / "metrics.json")["status"] in ("interrupted", "completed")
    assert not (sweep / "2").exists()  # the sweep stopped instead of starting the next job
    done = digest(sweep / "0")

    r = cli("resume", str(sweep), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"{sweep / '0'} is already completed; skipped" in r.stdout
    assert digest(sweep / "0") == done
    for job in ("1", "2"):
        assert read_json(sweep / job / "metrics.json")["status"] == "completed"


def test_resume_of_a_non_run_directory_is_one_line(tmp_path):
    r = cli("resume", str(tmp_path), cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "not a kdrun run" in r.stderr


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
