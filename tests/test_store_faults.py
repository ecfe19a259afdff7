"""The artifact store under concurrency and faults: built once, never loads a bad payload."""

from __future__ import annotations

import json
import logging
import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from filelock import FileLock

from kdrun.experiments.specs import check_state as _check_state
from kdrun.models import MLP
from kdrun.store import ArtifactStore, content_key, sha256_file
from tests.conftest import read_json
from tests.reliability_util import start, wait_for

SPEC = {"role": "teacher", "what": "a test model"}


def _model(classes: int = 10, hidden: int = 16) -> torch.nn.Module:
    torch.manual_seed(0)
    return MLP(64, [hidden], classes, 0.0)


def _get(store: ArtifactStore, builds: list[int]):
    model = _model()

    def build(_workdir: Path):
        builds.append(1)
        return _model().state_dict(), {"note": "built"}

    return store.get_or_build("teacher", SPEC, build, check=_check_state(model))


class _Evil:
    def __reduce__(self):  # would create a file if a loader ever executed it
        return (os.system, (f"touch {os.environ['KDRUN_TEST_SENTINEL']}",))


def _replace_payload(d: Path, write) -> None:
    """Rewrite the payload and, like a careless hand edit, re-sign it: only checks catch it."""
    write(d / "payload.pt")
    meta = read_json(d / "meta.json")
    meta["sha256"] = sha256_file(d / "payload.pt")
    (d / "meta.json").write_text(json.dumps(meta))


CORRUPTIONS = {
    "truncated": lambda d: (d / "payload.pt").write_bytes((d / "payload.pt").read_bytes()[:300]),
    "bad checksum": lambda d: (d / "payload.pt").write_bytes(
        (d / "payload.pt").read_bytes()[:-8] + b"\0" * 8
    ),
    "meta not json": lambda d: (d / "meta.json").write_text("{"),
    "wrong shape": lambda d: _replace_payload(
        d, lambda p: torch.save(_model(hidden=8).state_dict(), p)
    ),
    "wrong class count": lambda d: _replace_payload(
        d, lambda p: torch.save(_model(classes=5).state_dict(), p)
    ),
    "code, not weights": lambda d: _replace_payload(
        d, lambda p: p.write_bytes(pickle.dumps({"fc.weight": _Evil()}))
    ),
}


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_corrupt_artifact_is_reported_and_rebuilt(kind, tmp_path, caplog, monkeypatch):
    sentinel = tmp_path / "executed"
    monkeypatch.setenv("KDRUN_TEST_SENTINEL", str(sentinel))
    store, builds = ArtifactStore(tmp_path / "store"), []
    first = _get(store, builds)
    assert not first.from_cache and len(builds) == 1
    assert _get(store, builds).from_cache and len(builds) == 1  # sound: loaded, not rebuilt
    CORRUPTIONS[kind](first.path)
    caplog.set_level(logging.WARNING, logger="kdrun.store")
    again = _get(store, builds)
    assert not again.from_cache and len(builds) == 2
    assert "is corrupt" in caplog.text and str(first.path) in caplog.text
    for k, v in first.payload.items():
        assert torch.equal(v, again.payload[k])
    assert _get(store, builds).from_cache and len(builds) == 2  # the rebuilt one is sound
    assert not sentinel.exists()


def test_killed_lock_holder_does_not_block(tmp_path):
    store = ArtifactStore(tmp_path / "store")
    lock = str(store.dir("teacher", content_key(SPEC))) + ".lock"
    Path(lock).parent.mkdir(parents=True)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from filelock import FileLock; l = FileLock({lock!r}); "
            f"l.acquire(); print('held', flush=True); import time; time.sleep(600)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(TimeoutError):  # really held (filelock.Timeout is a TimeoutError)
        FileLock(lock).acquire(timeout=0.1)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert Path(lock).exists()  # the lock file stays behind; the OS lock died with its holder
    FileLock(lock).acquire(timeout=10)  # would time out if a stale lock blocked
    builds: list[int] = []
    assert not _get(store, builds).from_cache and len(builds) == 1


@pytest.mark.slow
def test_racing_processes_train_the_teacher_once(tmp_path):
    """Three kdrun processes need the same teacher; the first is frozen mid-training (holding
    the store lock) until both others are waiting for it."""
    store = tmp_path / "store"
    common = [
        "experiment=smoke",
        "teacher.train.epochs=4",
        "student.train.epochs=1",
        "baseline=false",
        "runtime.num_threads=1",
        f"store_dir={store}",
    ]
    runs = [tmp_path / f"run{i}" for i in range(3)]
    procs = [start(*common, f"hydra.run.dir={runs[0]}", cwd=tmp_path, log=tmp_path / "0.out")]
    wait_for(lambda: bool(list(store.glob("teacher/*/partial.pt"))), procs[0])
    procs[0].send_signal(signal.SIGSTOP)
    try:
        for i in (1, 2):
            procs.append(
                start(*common, f"hydra.run.dir={runs[i]}", cwd=tmp_path, log=tmp_path / f"{i}.out")
            )
        for i in (1, 2):
            log = runs[i] / "kdrun.log"
            wait_for(lambda log=log: log.is_file() and "waiting for" in log.read_text(), procs[i])
    finally:
        procs[0].send_signal(signal.SIGCONT)
    assert [p.wait(timeout=300) for p in procs] == [0, 0, 0]
    teachers = [read_json(r / "metrics.json")["teacher"] for r in runs]
    assert [t["from_cache"] for t in teachers] == [False, True, True]
    assert len({t["test_acc"] for t in teachers}) == 1
    assert len(list(store.glob("teacher/*/meta.json"))) == 1


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q", "--no-header"]))
