"""Content fingerprints of the files a data loader read: a full SHA-256 of every byte, cheap
on a warm run.

A file's hash is cached by (resolved path, size, inode, mtime_ns, ctime_ns). Tools can set
mtime back (``touch -d``, ``os.utime``, ``rsync -t``), but not ctime: the kernel sets it to
now on every content or metadata change, so a file rewritten in place with the same size and
an old mtime still misses the cache and is hashed afresh. Two guards close the remaining
gaps: the file is stat'ed again after hashing and the entry is kept only if nothing moved,
and a file changed within ``RACY_NS`` of the hashing is not cached at all (file timestamps
are kernel ticks, milliseconds apart: a change in the same tick would keep the same ctime).

The cache is one JSON file (``$KDRUN_DIGEST_CACHE``, default ~/.cache/kdrun/digests.json),
written atomically; a missing, unreadable or corrupt cache is ignored (everything is hashed
again). A directory is hashed as the sorted list of (relative path, file hash).

A fingerprint names content only, never where it lies: the same bytes under another root
give the same fingerprint, so the store shares what was trained on them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from kdrun.store.atomic import atomic_write_json

log = logging.getLogger("kdrun.store")

CACHE_VERSION = 1
MAX_ENTRIES = 500_000  # beyond this, the least recently used entries are dropped
RACY_NS = 2_000_000_000  # a file changed this recently is hashed, not cached
_CHUNK = 1 << 20


def default_cache_path() -> Path:
    env = os.environ.get("KDRUN_DIGEST_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "kdrun" / "digests.json"


def _stat_key(path: Path) -> tuple[str, os.stat_result]:
    real = path.resolve()
    st = real.stat()
    key = f"{real}|{st.st_size}|{st.st_ino}|{st.st_mtime_ns}|{st.st_ctime_ns}"
    return key, st


def _read_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


class DigestCache:
    """File hashes by stat signature, loaded once and saved once (``save``) per use."""

    def __init__(self, path: Path | None = None):
        self.path = Path(path) if path else default_cache_path()
        self.entries: dict[str, str] = self._load()
        self.dirty = False

    def _load(self) -> dict[str, str]:
        try:
            doc = json.loads(self.path.read_text())
            if doc.get("version") == CACHE_VERSION and isinstance(doc.get("entries"), dict):
                return {str(k): str(v) for k, v in doc["entries"].items()}
        except (OSError, ValueError, AttributeError):
            pass  # absent or corrupt: every file is hashed again, and the cache rewritten
        return {}

    def file(self, path: str | Path) -> str:
        """The SHA-256 of the file's full content (from the cache when its stat matches)."""
        key, st = _stat_key(Path(path))
        hit = self.entries.pop(key, None)
        if hit is not None:
            self.entries[key] = hit  # most recently used last
            return hit
        digest = _read_hash(Path(path))
        again, _ = _stat_key(Path(path))
        if again == key and time.time_ns() - st.st_ctime_ns > RACY_NS:
            self.entries[key] = digest
            self.dirty = True
        return digest

    def tree(self, root: str | Path) -> str:
        """A directory: the hash of its sorted (relative path, file hash) list."""
        root = Path(root)
        files = sorted(p for p in root.rglob("*") if p.is_file())
        return self.files({p.relative_to(root).as_posix(): p for p in files})

    def files(self, named: Mapping[str, str | Path]) -> str:
        """Named files or directories: the hash of the sorted (name, content hash) list."""
        h = hashlib.sha256()
        for name in sorted(named):
            p = Path(named[name])
            digest = self.tree(p) if p.is_dir() else self.file(p)
            h.update(f"{name}\0{digest}\n".encode())
        return h.hexdigest()

    def save(self) -> None:
        """Write the cache back (atomically) if it learned anything; failures are ignored:
        the cache only saves time."""
        if not self.dirty:
            return
        entries = self.entries
        if len(entries) > MAX_ENTRIES:
            entries = dict(list(entries.items())[-MAX_ENTRIES:])
        try:
            atomic_write_json({"version": CACHE_VERSION, "entries": entries}, self.path)
            self.dirty = False
        except OSError as e:
            log.debug("digest cache %s not written: %s", self.path, e)


def fingerprint_files(named: Mapping[str, str | Path], cache: DigestCache | None = None) -> str:
    """The content fingerprint of named files/directories (names are the loader's relative
    paths, so the root they lie under does not count)."""
    own = cache is None
    cache = cache or DigestCache()
    digest = cache.files(named)
    if own:
        cache.save()
    return digest


def named_under(root: str | Path, paths: Iterable[str | Path]) -> dict[str, str]:
    """``paths`` named by their path relative to ``root`` (what a loader records)."""
    root = Path(root)
    return {Path(p).relative_to(root).as_posix(): str(p) for p in paths}


_ARRAYS = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")


def arrays_digest(data: Any) -> str | None:
    """The hash of a data set's in-memory arrays (numpy or torch), for a loader that names
    no files (e.g. a plugin's); None if any split is something else (rows read from disk)."""
    h = hashlib.sha256()
    for name in _ARRAYS:
        a = getattr(data, name, None)
        if a is None:
            continue
        if hasattr(a, "detach"):  # a torch tensor
            a = a.detach().cpu().contiguous().numpy()
        if not hasattr(a, "tobytes") or not hasattr(a, "dtype"):
            return None
        h.update(f"{name}:{a.dtype}:{tuple(a.shape)}\n".encode())
        h.update(memoryview(a.copy(order="C") if not a.flags.c_contiguous else a).cast("B"))
    return h.hexdigest()


def data_fingerprint(data: Any, cache: DigestCache | None = None) -> str:
    """The content fingerprint of a loaded data set: of every file its loader read
    (``sources``: a RawData / ExternalRaw field, or ``extra['sources']`` of a DataBundle);
    else the corpus hash of a text data set (its loader hashes every byte it read); else
    the hash of its arrays (a loader that names no files). Two loads of the same bytes give
    the same string wherever the files lie."""
    sources = getattr(data, "sources", None)
    extra = getattr(data, "extra", None) or {}
    if sources is None:
        sources = extra.get("sources")
    if sources:
        return "files:" + fingerprint_files(sources, cache)[:32]
    if extra.get("files_sha256"):
        return "text:" + str(extra["files_sha256"])[:32]
    digest = arrays_digest(data)
    if digest is None:
        raise ValueError(
            f"{type(data).__name__} names no source files and holds no arrays; its loader "
            "must record the files it read (RawData.sources)"
        )
    return "arrays:" + digest[:32]
