"""One job on two processes (torchrun, gloo on CPU) against the same job on one process."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import kdrun_env, read_json
from tests.reliability_util import RECIPE, cli, numbers, reference_run, wait_for

TORCHRUN = [
    sys.executable,
    "-m",
    "torch.distributed.run",
    "--standalone",
    "--nproc_per_node=2",
    "-m",
    "kdrun",
]
# Measured: with the teacher shared, the 2-process student differs from the 1-process one
# only by the summation order of the gradient all-reduce (see docs/distributed.md).
ACC_TOLERANCE = 0.01


def torchrun(*args: str, cwd: Path, log: Path | None = None) -> subprocess.Popen:
    out = open(log, "w") if log else subprocess.PIPE  # noqa: SIM115 - closed with the process
    return subprocess.Popen(
        [*TORCHRUN, *args],
        cwd=cwd,
        env=kdrun_env(OMP_NUM_THREADS="1"),
        stdout=out,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def kill_all(p: subprocess.Popen) -> None:
    """SIGKILL torchrun and its workers (each in a session of its own, so not by group)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    todo, found = [p.pid], []
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    for pid in found:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    p.wait()


def _rank_pid(p: subprocess.Popen, rank: int) -> int:
    """The pid of torchrun's worker with RANK=rank (from /proc/PID/environ)."""
    for env in Path("/proc").glob("[0-9]*/environ"):
        try:
            text = env.read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in text and b"TORCHELASTIC_RUN_ID" in b"".join(text):
            pid = int(env.parent.name)
            if pid != p.pid and _is_descendant(pid, p.pid):
                return pid
    raise AssertionError(f"no worker with RANK={rank}")


def _is_descendant(pid: int, ancestor: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError):
            return False
    return False


def _payload(store: Path, kind: str) -> torch.Tensor:
    (path,) = store.glob(f"{kind}/*/payload.pt")
    return torch.load(path, weights_only=True)


@pytest.mark.slow
def test_two_processes_match_one_process_then_resume_after_sigkill(tmp_path):
    ref_dir, ref_store = reference_run(*RECIPE)
    store = tmp_path / "store"
    shutil.copytree(ref_store / "teacher", store / "teacher")  # the same teacher; all else anew
    run = tmp_path / "run2"
    p = torchrun(*RECIPE, f"store_dir={store}", f"hydra.run.dir={run}", cwd=tmp_path)
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 0, out[-3000:]
    m, ref = read_json(run / "metrics.json"), read_json(ref_dir / "metrics.json")
    assert (m["world_size"], m["dist_backend"], ref["world_size"]) == (2, "gloo", 1)
    assert m["from_store"]["teacher"] and not m["from_store"]["teacher_logits"]
    # rank 0 computed the cache alone, in a single process's batches: the same bytes
    assert torch.equal(_payload(store, "teacher_logits"), _payload(ref_store, "teacher_logits"))
    for stage in ("baseline", "student"):
        assert abs(m[stage]["test_acc"] - ref[stage]["test_acc"]) <= ACC_TOLERANCE, stage
        assert abs(m[stage]["val_acc"] - ref[stage]["val_acc"]) <= ACC_TOLERANCE, stage
    assert sorted(os.listdir(run / "checkpoints")) == [
        "baseline.pt",
        "preprocessing.json",
        "student.pt",
        "student_last.pt",
        "teacher.pt",
    ]

    # the same 2-process job: rank 1 alone SIGKILLed (torchrun then stops rank 0), then
    # every process SIGKILLed, each after a student checkpoint; then run to the end
    run3 = tmp_path / "run3"
    args = [*RECIPE, f"store_dir={store}", f"hydra.run.dir={run3}"]
    partial = run3 / "checkpoints" / "student.partial.pt"
    p = torchrun(*args, cwd=tmp_path, log=tmp_path / "rank1.log")
    wait_for(partial.is_file, p, limit=300)
    os.kill(_rank_pid(p, 1), signal.SIGKILL)
    assert p.wait(timeout=120) != 0
    assert read_json(run3 / "metrics.json")["status"] != "completed"
    first = partial.stat().st_mtime_ns
    p = torchrun(*args, cwd=tmp_path, log=tmp_path / "all.log")
    wait_for(lambda: partial.is_file() and partial.stat().st_mtime_ns != first, p, limit=300)
    kill_all(p)
    p = torchrun(*args, cwd=tmp_path)
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 0, out[-3000:]
    assert "student: resuming from" in out
    assert numbers(run3) == numbers(run)  # as if never killed


@pytest.mark.slow
def test_bad_process_counts_and_backends_are_one_line_errors(tmp_path):
    ddp = {
        "RANK": "0",
        "WORLD_SIZE": "2",
        "LOCAL_RANK": "0",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "29999",
        "TORCHELASTIC_RUN_ID": "abcdef12",
    }
    r = cli(
        "experiment=smoke",
        "student.train.batch_size=1",
        f"store_dir={tmp_path}/s",
        cwd=tmp_path,
        env=ddp,
    )
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == (
        "kdrun: error: [rank 0/2] 2 processes but student.train.batch_size=1: batch_size is "
        "the global batch, split over ranks; raise it to >= 2 or use fewer processes "
        "(--nproc_per_node)"
    )
    assert (tmp_path / "outputs/runs/ddp-abcdef12/metrics.json").is_file()  # the shared dir
    r = cli(
        "experiment=smoke",
        "runtime.dist_backend=nccl",
        "device=cpu",
        cwd=tmp_path,
        env=ddp,
    )
    assert r.returncode == 2 and "dist_backend=nccl needs CUDA" in r.stderr.splitlines()[-1]
    r = cli("-m", "experiment=smoke", "T=1,2", cwd=tmp_path, env=ddp)
    assert r.returncode == 2 and "not a sweep" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
