"""Batch sources: image rows held as uint8 in memory, or decoded from disk per batch.

The training loop reads a split with ``fetch(x, idx, device)`` -> ``x.index_select(0, idx)``,
predicts with ``x[a:b]`` and sizes things with ``len(x)``/``x.shape``. Both classes here answer
those calls with normalised float32 rows, so the loop needs no change:

- ``U8Rows``: the decoded images as one uint8 tensor (4x less memory than float32),
  normalised per batch;
- ``FileRows``: only the file list; a batch is decoded from disk when asked for (worker
  threads; PIL releases the GIL while decoding), so memory stays flat whatever the size.

Rows are addressed by sample index, so the teacher-logit cache (indexed like the training
split) and augmentation (applied to the fetched batch) behave the same for both. Both decode
with ``decode_image`` and normalise with ``normalize``: the same uint8 values and the same
arithmetic, hence bit-identical batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image

GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"})


def image_array(im: Image.Image, channels: int, size: tuple[int, int]) -> np.ndarray:
    """A PIL image -> uint8 (C, H, W): grayscale or RGB, resized (bilinear) to ``size``."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # 16-bit/float gray: scale to 8 bits
        im = Image.fromarray((np.asarray(im, np.float64) / 257.0).clip(0, 255).astype("u1"))
    im = im.convert("L" if channels == 1 else "RGB")
    if im.size != (size[1], size[0]):
        im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    a = np.asarray(im, dtype=np.uint8)
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def decode_image(path: str, channels: int, size: tuple[int, int]) -> np.ndarray:
    """One image file -> uint8 (C, H, W) (see ``image_array``)."""
    with Image.open(path) as im:
        return image_array(im, channels, size)


def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float32 (x / 255 - mean) / std, per channel."""
    m, s = mean.to(x.device)[:, None, None], std.to(x.device)[:, None, None]
    return x.float().div_(255.0).sub_(m).div_(s)


class _Rows:
    """What the loop asks of a split: rows by index or slice, length, shape, device."""

    dtype = torch.float32

    def __init__(self, n: int, item_shape: Sequence[int], mean: torch.Tensor, std: torch.Tensor):
        self.shape = torch.Size((n, *item_shape))
        self.mean, self.std = mean.float(), std.float()

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def rows(self, idx: np.ndarray) -> torch.Tensor:  # uint8 (len(idx), C, H, W)
        raise NotImplementedError

    def index_select(self, dim: int, idx: torch.Tensor) -> torch.Tensor:
        assert dim == 0, "rows are selected along dim 0"
        return normalize(self.rows(idx.detach().cpu().numpy()), self.mean, self.std)

    def __getitem__(self, key: int | slice | torch.Tensor) -> torch.Tensor:
        if isinstance(key, slice):
            return self.index_select(0, torch.arange(len(self))[key])
        if isinstance(key, torch.Tensor):
            return self.index_select(0, key.reshape(-1))
        return self.index_select(0, torch.tensor([int(key)]))[0]

    def to(self, *_args, **_kw) -> _Rows:
        return self  # rows are produced on the CPU; fetch() moves each batch

    def with_stats(self, mean: torch.Tensor, std: torch.Tensor) -> _Rows:
        """The same rows, normalised with these per-channel statistics."""
        out = self._copy()
        out.mean, out.std = mean.float(), std.float()
        return out

    def _copy(self) -> _Rows:
        out = object.__new__(type(self))
        out.__dict__.update(self.__dict__)
        return out

    def take(self, idx: np.ndarray) -> _Rows:
        raise NotImplementedError


class U8Rows(_Rows):
    """Decoded images held as one uint8 tensor."""

    def __init__(self, x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor):
        super().__init__(len(x), x.shape[1:], mean, std)
        self.x = x

    def rows(self, idx: np.ndarray) -> torch.Tensor:
        return self.x.index_select(0, torch.from_numpy(np.asarray(idx, np.int64)))

    def take(self, idx: np.ndarray) -> U8Rows:
        return U8Rows(self.rows(idx), self.mean, self.std)

    @property
    def nbytes(self) -> int:
        return self.x.numel()


class FileRows(_Rows):
    """Image files decoded per batch (``workers`` threads)."""

    def __init__(
        self,
        paths: Sequence[str],
        channels: int,
        size: tuple[int, int],
        mean: torch.Tensor,
        std: torch.Tensor,
        workers: int = 2,
    ):
        super().__init__(len(paths), (channels, *size), mean, std)
        self.paths, self.channels, self.size, self.workers = list(paths), channels, size, workers

    def _one(self, i: int) -> np.ndarray:
        return decode_image(self.paths[i], self.channels, self.size)

    def rows(self, idx: np.ndarray) -> torch.Tensor:
        idx = [int(i) for i in np.asarray(idx).reshape(-1)]
        if self.workers > 1 and len(idx) > 1:
            with ThreadPoolExecutor(self.workers) as pool:
                arrays = list(pool.map(self._one, idx))
        else:
            arrays = [self._one(i) for i in idx]
        if not arrays:
            return torch.empty((0, *self.shape[1:]), dtype=torch.uint8)
        return torch.from_numpy(np.stack(arrays))

    def take(self, idx: np.ndarray) -> FileRows:
        paths = [self.paths[int(i)] for i in np.asarray(idx).reshape(-1)]
        return FileRows(paths, self.channels, self.size, self.mean, self.std, self.workers)

    @property
    def nbytes(self) -> int:
        return 0
