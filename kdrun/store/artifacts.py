"""Atomic file writes and a content-addressed artifact store.

An artifact (a trained teacher, a baseline, a tensor of teacher logits) is addressed by a
hash of everything that determines it. The first process that needs it builds it under a
file lock; every other process, sequential or parallel, waits and loads it. ``meta.json``
is written last and carries the payload's SHA-256, so a half-written or corrupted payload is
detected and rebuilt, never loaded. The lock is an OS advisory lock (flock): it dies with
its process, so a killed job leaves no stale lock behind.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import shutil
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock, Timeout

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# mkstemp creates files 0600; results should get the usual umask-based mode (e.g. 0644), so
# that a shared store or sweep directory is readable like any other output.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def atomic_write(path: Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Write to a temp file in the same directory, fsync, rename over ``path``.

    A crash at any instant leaves either the old file or the new one, never a torn one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError) and e.filename in (None, tmp):
            e.filename = str(path)  # name the file the user knows, not the temp file
        raise


def atomic_torch_save(obj: Any, path: Path) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_json(obj: Any, path: Path) -> None:
    atomic_write(path, lambda f: json.dump(obj, f, indent=2, allow_nan=True), mode="w")


def atomic_write_text(text: str, path: Path) -> None:
    atomic_write(path, lambda f: f.write(text), mode="w")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def content_key(spec: Any) -> str:
    """Stable hash of a JSON-able description of everything that determines an artifact."""
    blob = json.dumps({"format": FORMAT_VERSION, "spec": spec}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


class CorruptArtifact(Exception):
    """Raised by a store check when a payload does not fit what it should be."""


class UnsafeFile(CorruptArtifact):
    """The file holds pickled objects beyond plain tensors/containers: loading would run code."""


def load_weights(path: Path) -> Any:
    """``torch.load(weights_only=True)``: tensors and plain containers only, never code.

    Raises UnsafeFile for a pickle that would need to run code, CorruptArtifact for anything
    unreadable (truncated, not a torch file).
    """
    try:
        with warnings.catch_warnings():  # e.g. a protocol notice: the error below says it all
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only load failed" in str(e).lower():
            raise UnsafeFile(
                "it holds pickled Python objects, not plain weights (kdrun never runs code "
                "from a file)"
            ) from None
        raise CorruptArtifact(f"not a readable torch file ({str(e).splitlines()[0]})") from None
    except OSError:  # an I/O error, not a bad file: the caller decides
        raise
    except Exception as e:
        text = str(e).strip() if not isinstance(e, (KeyError, IndexError)) else ""
        reason = text.splitlines()[0].split(". ")[0][:120] if text else "invalid data"
        raise CorruptArtifact(f"not a readable torch file ({reason})") from None


@dataclass
class Artifact:
    payload: Any
    meta: dict[str, Any]
    from_cache: bool
    path: Path


class ArtifactStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def dir(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    def _try_load(
        self, d: Path, check: Callable[[Any], None] | None, repair: bool = False
    ) -> tuple[Any, dict[str, Any]] | None:
        """The artifact in ``d`` if it is complete and sound, else None.

        Only the lock holder repairs (``repair=True``: reports and deletes a corrupt artifact),
        so a reader never deletes what a concurrent builder has just written.
        """
        meta_p, payload_p = d / "meta.json", d / "payload.pt"
        if not meta_p.is_file():
            return None
        try:
            meta = json.loads(meta_p.read_text())
            if not payload_p.is_file():
                raise CorruptArtifact("payload missing")
            if sha256_file(payload_p) != meta.get("sha256"):
                raise CorruptArtifact("checksum mismatch")
            payload = load_weights(payload_p)
            if check is not None:
                check(payload)
        except Exception as e:  # whatever is wrong with it, it is rebuilt, never loaded
            if repair:
                log.warning("stored %s %s is corrupt (%s); rebuilding it", d.parent.name, d, e)
                for p in (meta_p, payload_p):
                    p.unlink(missing_ok=True)
            return None
        return payload, meta

    def get_or_build(
        self,
        kind: str,
        spec: Any,
        build: Callable[[Path], tuple[Any, dict[str, Any]]],
        check: Callable[[Any], None] | None = None,
        on_wait: Callable[[], None] | None = None,
    ) -> Artifact:
        """Load the artifact described by ``spec``, building it (once, under a lock) if absent.

        ``build(workdir)`` returns (payload, meta); it may keep resumable state in workdir.
        ``check(payload)`` raises CorruptArtifact (or RuntimeError) if the payload is unfit.
        """
        key = content_key(spec)
        d = self.dir(kind, key)
        hit = self._try_load(d, check)
        if hit is not None:
            return Artifact(hit[0], hit[1], True, d)
        d.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(d) + ".lock")
        try:
            lock.acquire(timeout=0)
        except Timeout:
            if on_wait is not None:
                on_wait()
            lock.acquire()
        try:
            hit = self._try_load(d, check, repair=True)  # maybe built while we waited
            if hit is not None:
                return Artifact(hit[0], hit[1], True, d)
            payload, meta = build(d)
            atomic_torch_save(payload, d / "payload.pt")
            meta = {**meta, "kind": kind, "key": key, "spec": spec, "format": FORMAT_VERSION,
                    "sha256": sha256_file(d / "payload.pt")}  # fmt: skip
            atomic_write_json(meta, d / "meta.json")  # written last: marks completion
            return Artifact(payload, meta, False, d)
        finally:
            lock.release()

    def remove(self, kind: str, key: str) -> None:
        shutil.rmtree(self.dir(kind, key), ignore_errors=True)
