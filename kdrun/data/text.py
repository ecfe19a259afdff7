"""Text corpora for causal language modelling, tokenised once and held as token tensors.

``dataset=text dataset.path=FILE_OR_DIR`` reads plain text (a directory recursively, files
matching ``dataset.glob``); ``dataset=pystdlib`` reads the running interpreter's standard
library ``.py`` sources (a fixed, sorted list without the test suites: offline, reproducible for
a given Python version, whose version and file-list hash land in metrics.json).

Splits: by file when there are enough files (each split a set of whole files, chosen with
``split_seed``; sizes as fractions of the bytes), otherwise by contiguous chunks (the last
``val_size + test_size`` share of the text). Each split is one token tensor; a *sample* is the
window of ``block_size + 1`` tokens starting at ``i * stride``: inputs ``x[i]`` are its first
``block_size`` tokens and targets ``y[i]`` the same shifted by one. ``x`` and ``y`` are strided
views of the token tensor (no copy), and samples are addressed by index like images, so
teacher outputs can be cached per sample.

Tokenisers: bytes (256 symbols, no dependency) by default; a Hugging Face tokenizer saved in
a local directory with ``dataset.tokenizer=DIR`` (transformers, the ``hf`` extra).
"""

from __future__ import annotations

import hashlib
import math
import os
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdrun.data.registry import DATASETS, register_dataset
from kdrun.errors import DataError, one_line

# Parts of the standard library left out of ``pystdlib``: test suites (they hold deliberately
# odd encodings and dominate the size), the IDE, demos and third-party installs.
_STDLIB_SKIP = {
    "test",
    "tests",
    "idle_test",
    "idlelib",
    "turtledemo",
    "site-packages",
    "dist-packages",
    "__pycache__",
    "lib2to3",
}
_MIN_FILES_FOR_FILE_SPLIT = 10


# --------------------------------------------------------------------------- tokenisers


class ByteTokenizer:
    """UTF-8 bytes as tokens: vocabulary 256, one token per byte (so bits/token = bits/byte)."""

    name = "bytes"
    vocab_size = 256

    def encode(self, data: bytes) -> np.ndarray:
        return np.frombuffer(data, dtype=np.uint8).astype(np.int32)

    def decode(self, ids: list[int]) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


class HFTokenizer:
    """A tokenizer saved with ``save_pretrained`` in a local directory (never downloaded)."""

    def __init__(self, path: str):
        d = Path(path).expanduser()
        if not d.is_dir() or not any(
            (d / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json")
        ):
            raise DataError(
                f"dataset.tokenizer={path} is not a tokenizer directory (no tokenizer.json or "
                f"tokenizer_config.json in it); give the directory of tokenizer.save_pretrained()"
                f" or drop dataset.tokenizer for bytes"
            )
        try:
            from transformers import AutoTokenizer  # optional extra: kdrun[hf]
        except ImportError:
            raise DataError(
                "dataset.tokenizer needs transformers; pip install 'kdrun[hf]'"
            ) from None
        try:
            self.tok = AutoTokenizer.from_pretrained(str(d), local_files_only=True)
        except Exception as e:  # transformers raises many types for a broken directory
            raise DataError(
                f"dataset.tokenizer={path} cannot be loaded ({one_line(e, 160)}); re-save it "
                f"with tokenizer.save_pretrained(DIR)"
            ) from None
        self.name = f"hf:{d.resolve()}"
        self.vocab_size = len(self.tok)

    def encode(self, data: bytes) -> np.ndarray:
        text = data.decode("utf-8")
        return np.asarray(self.tok(text, add_special_tokens=False)["input_ids"], dtype=np.int32)

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode([int(i) for i in ids])


def make_tokenizer(path: str | None) -> ByteTokenizer | HFTokenizer:
    return HFTokenizer(path) if path else ByteTokenizer()


# --------------------------------------------------------------------------- sources


@dataclass
class TextFile:
    rel: str
    data: bytes


def _check_text(rel: str, data: bytes, where: str) -> None:
    if not data:
        raise DataError(f"{where}/{rel} is empty; remove it or point dataset.path at text files")
    try:
        data.decode("utf-8")
        binary = b"\x00" in data
    except UnicodeDecodeError:
        binary = True
    if binary:
        raise DataError(
            f"{where}/{rel} is not UTF-8 text (binary?); remove it, or narrow dataset.glob "
            f"to text files"
        )


def read_text_files(path: str, glob: str = "*") -> list[TextFile]:
    """A file, or the files under a directory matching ``glob`` (recursive, sorted, hidden
    files skipped); every one must be non-empty UTF-8 text."""
    p = Path(path).expanduser()
    if p.is_file():
        files, root = [p], p.parent
    elif p.is_dir():
        root = p
        files = sorted(
            f
            for f in p.rglob(glob)
            if f.is_file() and not any(part.startswith(".") for part in f.relative_to(p).parts)
        )
        if not files:
            raise DataError(f"dataset.path={path} holds no files matching '{glob}'; add text files")
    else:
        raise DataError(f"dataset.path={path} does not exist; give a text file or a directory")
    out = []
    for f in files:
        try:
            data = f.read_bytes()
        except OSError as e:
            raise DataError(f"cannot read {f}: {one_line(e)}") from None
        rel = str(f.relative_to(root))
        _check_text(rel, data, str(root))
        out.append(TextFile(rel, data))
    return out


def stdlib_files() -> tuple[Path, list[Path]]:
    """The standard library's .py files, in a fixed sorted order (see ``_STDLIB_SKIP``)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for d, subdirs, names in os.walk(root):
        subdirs[:] = [s for s in subdirs if s not in _STDLIB_SKIP]  # never walk site-packages
        files += [Path(d) / n for n in names if n.endswith(".py")]
    return root, sorted(f for f in files if f.is_file())


def read_pystdlib() -> list[TextFile]:
    root, files = stdlib_files()
    out = []
    for f in files:
        data = f.read_bytes()
        try:  # the few non-UTF-8 or empty sources are skipped (the same ones every time)
            data.decode("utf-8")
        except UnicodeDecodeError:
            continue
        if data:
            out.append(TextFile(str(f.relative_to(root)), data))
    if not out:
        raise DataError(f"no standard-library sources found under {root}; use dataset=text")
    return out


def corpus_hash(files: list[TextFile]) -> str:
    """sha256 over every file's relative path and content: same hash, same corpus."""
    h = hashlib.sha256()
    for f in files:
        h.update(f.rel.encode() + b"\0" + hashlib.sha256(f.data).digest())
    return h.hexdigest()


# --------------------------------------------------------------------------- splits


def split_files(
    files: list[TextFile], val_size: float, test_size: float, seed: int
) -> dict[str, list[bytes]] | None:
    """Whole files per split (shares of the bytes), or None when a split would get none."""
    if len(files) < _MIN_FILES_FOR_FILE_SPLIT:
        return None
    order = np.random.default_rng(seed).permutation(len(files))
    total = sum(len(f.data) for f in files)
    out: dict[str, list[bytes]] = {"val": [], "test": [], "train": []}
    budget = {"val": val_size * total, "test": test_size * total}
    for i in order:
        data = files[i].data
        for split in ("val", "test"):
            if budget[split] > 0 and (not out[split] or sum(map(len, out[split])) < budget[split]):
                out[split].append(data)
                break
        else:
            out["train"].append(data)
    return out if all(out.values()) else None


def split_chunks(
    files: list[TextFile], val_size: float, test_size: float
) -> dict[str, list[bytes]]:
    """Contiguous chunks of the concatenated text: train, then val, then test."""
    text = b"".join(f.data for f in files)
    n = len(text)
    a, b = int(n * (1 - val_size - test_size)), int(n * (1 - test_size))
    # cut at line starts so no split begins mid-character or mid-line
    a, b = text.rfind(b"\n", 0, a) + 1 or a, text.rfind(b"\n", 0, b) + 1 or b
    return {"train": [text[:a]], "val": [text[a:b]], "test": [text[b:]]}


# --------------------------------------------------------------------------- the bundle


def windows(tokens: torch.Tensor, block: int, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) of every window of ``block + 1`` tokens starting at ``i * stride``:
    strided views of ``tokens`` (no copy)."""
    w = tokens.unfold(0, block + 1, stride)
    return w[:, :-1], w[:, 1:]


@dataclass
class TextData:
    """Token windows of the three splits, addressed by sample index like image rows.

    Duck-types the image ``DataBundle`` where the training loop reads it (``x_*``, ``y_*``,
    ``student_idx``, ``augment``, ``in_shape``, ``num_classes``, ``to``)."""

    name: str
    tokens: dict[str, torch.Tensor]  # split -> 1-D int32 token tensor
    block_size: int
    stride: int
    vocab_size: int
    bytes_per_token: dict[str, float]  # split -> bytes of text per token (1.0 for bytes)
    tokenizer: Any
    student_idx: torch.Tensor
    augment: bool = False
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._make_views()

    def _make_views(self) -> None:
        for split in ("train", "val", "test"):
            x, y = windows(self.tokens[split], self.block_size, self.stride)
            setattr(self, f"x_{split}", x)
            setattr(self, f"y_{split}", y)

    @property
    def num_classes(self) -> int:
        return self.vocab_size

    @property
    def in_shape(self) -> tuple[int]:
        return (self.block_size,)

    @property
    def teacher_idx(self) -> torch.Tensor:
        return torch.arange(len(self.x_train))

    @property
    def student_val_idx(self) -> torch.Tensor:
        return torch.arange(len(self.x_val))

    @property
    def teacher_val_idx(self) -> torch.Tensor:
        return self.student_val_idx

    def to(self, device: torch.device | str) -> TextData:
        self.tokens = {k: v.to(device) for k, v in self.tokens.items()}
        self.student_idx = self.student_idx.to(device)
        self._make_views()
        return self


def _tokenize(tok, parts: list[bytes]) -> torch.Tensor:
    arrays = [tok.encode(p) for p in parts]
    return torch.from_numpy(np.concatenate(arrays) if arrays else np.zeros(0, np.int32))


def build_text_data(cfg, name: str, files: list[TextFile], extra: dict[str, Any]) -> TextData:
    """Split, tokenise and window ``files`` per the dataset config."""
    block, stride = int(cfg.block_size), int(cfg.stride) or int(cfg.block_size)
    if block < 1 or stride < 1:
        raise DataError(
            f"dataset.block_size and dataset.stride must be >= 1 (got {block}, {stride})"
        )
    if not (0 < cfg.val_size < 1 and 0 < cfg.test_size < 1 and cfg.val_size + cfg.test_size < 1):
        raise DataError(
            f"dataset.val_size={cfg.val_size} and dataset.test_size={cfg.test_size} must be "
            f"fractions of the text in (0, 1) adding up to less than 1"
        )
    splits = split_files(files, cfg.val_size, cfg.test_size, cfg.split_seed)
    how = "file"
    if splits is None:
        splits, how = split_chunks(files, cfg.val_size, cfg.test_size), "chunk"
    tok = make_tokenizer(cfg.tokenizer)
    tokens = {k: _tokenize(tok, v) for k, v in splits.items()}
    for split, t in tokens.items():
        if len(t) < block + 1:
            raise DataError(
                f"dataset.block_size={block} is larger than the {split} split "
                f"({len(t)} tokens); lower dataset.block_size or give more text"
            )
    nbytes = {k: sum(map(len, v)) for k, v in splits.items()}
    bpt = {k: nbytes[k] / len(tokens[k]) for k in tokens}
    n_train = (len(tokens["train"]) - block - 1) // stride + 1
    s_idx = torch.arange(n_train)
    if cfg.train_fraction < 1:  # the student's transfer set: a fixed random subset of windows
        k = max(1, round(cfg.train_fraction * n_train))
        gen = torch.Generator().manual_seed(cfg.split_seed + 1)
        s_idx = torch.randperm(n_train, generator=gen)[:k].sort().values
    info = {
        **extra,
        "split": how,
        "tokenizer": tok.name,
        "vocab_size": tok.vocab_size,
        "bytes": nbytes,
        "tokens": {k: len(v) for k, v in tokens.items()},
    }
    return TextData(name, tokens, block, stride, tok.vocab_size, bpt, tok, s_idx, extra=info)


def _lm_dataset(name: str):
    """Register a corpus loader in the data set registry under the ``lm`` task."""
    return register_dataset(name, num_classes=0, class_names=[], task="lm")


@_lm_dataset("text")
def load_text(cfg) -> TextData:
    if not cfg.path:
        raise DataError("dataset=text needs dataset.path=FILE_OR_DIR (plain text files)")
    files = read_text_files(cfg.path, cfg.glob)
    extra = {"path": str(cfg.path), "files": len(files), "files_sha256": corpus_hash(files)}
    return build_text_data(cfg, "text", files, extra)


@_lm_dataset("pystdlib")
def load_pystdlib(cfg) -> TextData:
    files = read_pystdlib()
    v = sys.version_info
    extra = {
        "python": f"{v.major}.{v.minor}.{v.micro}",
        "files": len(files),
        "files_sha256": corpus_hash(files),
    }
    return build_text_data(cfg, "pystdlib", files, extra)


def load_text_data(cfg) -> TextData:
    if cfg.name not in DATASETS or DATASETS[cfg.name].task != "lm":
        names = sorted(k for k, v in DATASETS.items() if v.task == "lm")
        raise DataError(f"unknown text dataset '{cfg.name}'; choose one of: {', '.join(names)}")
    return DATASETS[cfg.name].load(cfg)


def bits_per_byte(nats_per_token: float, bytes_per_token: float) -> float:
    """Cross-entropy in nats per token -> bits per byte of the underlying text."""
    return nats_per_token / math.log(2) / bytes_per_token
