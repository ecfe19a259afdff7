"""Atomic file writes and safe weight loading: a crash leaves the old file or the new one."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


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


class CorruptArtifact(Exception):
    """Raised by a store check when a payload does not fit what it should be."""


class UnsafeFile(CorruptArtifact):
    """The file holds pickled objects beyond plain tensors/containers: loading would run code."""


def load_weights(path: Path) -> Any:
    """``torch.load(weights_only=True)``: tensors and plain containers only, never code.

    Raises UnsafeFile for a pickle that would need to run code, CorruptArtifact for anything
    unreadable (truncated, not a torch file).
    """
    with open(path, "rb") as f:
        head = f.read(2)
    # torch.save writes a zip archive (or, before torch 1.6, a pickle: protocol byte 0x80);
    # torch.load reads anything else as a pickle and calls random bytes "pickled objects"
    if head and head != b"PK" and head[:1] != b"\x80":
        raise CorruptArtifact("not a torch file (neither a zip archive nor a pickle)")
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
