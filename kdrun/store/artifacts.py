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
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from kdrun.store.atomic import (
    CorruptArtifact,
    atomic_torch_save,
    atomic_write_json,
    load_weights,
    sha256_file,
)

log = logging.getLogger("kdrun.store")

FORMAT_VERSION = 1


def canonical(spec: Any) -> Any:
    """``spec`` with equal numbers written alike: an integral float becomes an int, so
    ``beta=1`` and ``beta=1.0`` (YAML vs. command line) describe the same artifact."""
    if isinstance(spec, dict):
        return {str(k): canonical(v) for k, v in spec.items()}
    if isinstance(spec, (list, tuple)):
        return [canonical(v) for v in spec]
    if isinstance(spec, float) and spec.is_integer():
        return int(spec)
    return spec


def same_spec(a: Any, b: Any) -> bool:
    """Whether two specs describe the same artifact (as stored in meta.json: JSON, numbers
    written alike)."""

    def norm(x: Any) -> str:
        return json.dumps(canonical(json.loads(json.dumps(x, default=str))), sort_keys=True)

    return norm(a) == norm(b)


def content_key(spec: Any) -> str:
    """Stable hash of a JSON-able description of everything that determines an artifact."""
    blob = json.dumps(
        {"format": FORMAT_VERSION, "spec": canonical(spec)}, sort_keys=True, default=str
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


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
        self,
        d: Path,
        check: Callable[[Any], None] | None,
        repair: bool = False,
        spec: Any = None,
    ) -> tuple[Any, dict[str, Any]] | None:
        """The artifact in ``d`` if it is complete and sound, else None. With ``spec``, the
        spec the artifact's meta.json claims must be this one (a copied or colliding entry
        is rebuilt, not used).

        Only the lock holder repairs (``repair=True``: reports and deletes a corrupt artifact),
        so a reader never deletes what a concurrent builder has just written.
        """
        meta_p, payload_p = d / "meta.json", d / "payload.pt"
        if not meta_p.is_file():
            return None
        try:
            meta = json.loads(meta_p.read_text())
            if spec is not None and "spec" in meta and not same_spec(meta["spec"], spec):
                raise CorruptArtifact("it was stored for another spec")
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
        hit = self._try_load(d, check, spec=spec)
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
            hit = self._try_load(d, check, repair=True, spec=spec)  # maybe built meanwhile
            if hit is not None:
                return Artifact(hit[0], hit[1], True, d)
            payload, meta = build(d)
            atomic_torch_save(payload, d / "payload.pt")
            meta = {
                **meta,
                "kind": kind,
                "key": key,
                "spec": spec,
                "format": FORMAT_VERSION,
                "sha256": sha256_file(d / "payload.pt"),
            }
            atomic_write_json(meta, d / "meta.json")  # written last: marks completion
            return Artifact(payload, meta, False, d)
        finally:
            lock.release()

    def has(self, kind: str, spec: Any, check: Callable[[Any], None] | None = None) -> bool:
        """Whether a sound artifact for ``spec`` is stored (loads and checks it; no lock)."""
        return self._try_load(self.dir(kind, content_key(spec)), check, spec=spec) is not None

    def remove(self, kind: str, key: str) -> None:
        shutil.rmtree(self.dir(kind, key), ignore_errors=True)
