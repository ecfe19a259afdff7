"""Everything kdrun writes: atomic files, safe loading, and the content-addressed artifact store."""

from kdrun.store.artifacts import Artifact, ArtifactStore, content_key
from kdrun.store.atomic import (
    CorruptArtifact,
    UnsafeFile,
    atomic_torch_save,
    atomic_write,
    atomic_write_json,
    atomic_write_text,
    load_weights,
    sha256_file,
)

__all__ = [
    "Artifact",
    "ArtifactStore",
    "CorruptArtifact",
    "UnsafeFile",
    "atomic_torch_save",
    "atomic_write",
    "atomic_write_json",
    "atomic_write_text",
    "content_key",
    "load_weights",
    "sha256_file",
]
