"""Data sets as in-memory tensors: a registry of loaders, fixed splits, batched augmentation.

Every built-in data set is read once into float32 tensors (N, C, H, W), normalised with
statistics of the training split, and moved to the training device. The user's own data
(kdrun.data.external) is held as uint8 rows normalised per batch, or streamed from disk; the
loop reads both the same way (``x.index_select(0, idx)``). Batches are index slices;
augmentation is a batched tensor op.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from kdrun.data.external import ExternalRaw, LoadHints, load_external, split_rows, take
from kdrun.data.registry import DATASETS, DatasetSpec, RawData
from kdrun.errors import DataError

# The label of an unlabelled image of the transfer set: torch's cross_entropy ignore_index
# (kdrun.methods.losses.hard_ce skips it)
UNLABELLED = -100

# --------------------------------------------------------------------------- the bundle


@dataclass
class DataBundle:
    """All splits on one device, plus the index sets each stage trains and selects on.

    ``x_train`` is the teacher's full training split. Students train on ``student_idx`` (a
    subset of it when ``train_fraction``/``omit_classes``/``keep_classes`` apply) and select
    their model on ``student_val_idx``; cached teacher logits are keyed by ``x_train`` index.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    class_names: list[str]
    mean: torch.Tensor
    std: torch.Tensor
    student_idx: torch.Tensor
    student_val_idx: torch.Tensor
    augment: bool = False
    crop_padding: int = 4
    hflip: bool = True
    extra: dict = field(default_factory=dict)
    # the files the loader read (RawData.sources): kept out of ``extra``, which metrics.json
    # records, as an image folder names thousands
    sources: dict[str, str] | None = None
    # Which view of each example x_train/x_val/x_test hold (kdrun.data.views), and the data
    # set's other named views (name -> x_train, x_val, x_test, mean, std: the same rows)
    view: str = "full"
    named_views: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    # dataset.unlabelled_transfer: the transfer set's rows outside ``student_idx``, which the
    # distilled student sees without labels (``transfer_view``); None: there are none
    unlabelled_idx: torch.Tensor | None = None

    @property
    def in_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]

    @property
    def teacher_idx(self) -> torch.Tensor:
        return torch.arange(len(self.y_train), device=self.y_train.device)

    @property
    def teacher_val_idx(self) -> torch.Tensor:
        return torch.arange(len(self.y_val), device=self.y_val.device)

    def transfer_view(self) -> DataBundle:
        """The distilled student's transfer set: the labelled rows and the unlabelled ones,
        whose labels read UNLABELLED (the teacher's and the baseline's bundle is untouched)."""
        if self.unlabelled_idx is None or len(self.unlabelled_idx) == 0:
            return self
        y = self.y_train.clone()
        y[self.unlabelled_idx] = UNLABELLED
        rows = torch.cat([self.student_idx, self.unlabelled_idx]).sort().values
        return dataclasses.replace(self, y_train=y, student_idx=rows, unlabelled_idx=None)

    def training_split(
        self, tag: str, x: torch.Tensor, y: torch.Tensor, x_val: torch.Tensor | None = None
    ) -> DataBundle:
        """A bundle that trains on (x, y), every row the student's, with no validation rows
        (``x_val``: an empty tensor of the shape to report) and this bundle's test split: a
        condensed set, a data-free generator's placeholder rows."""
        none = torch.zeros(0, dtype=torch.long, device=y.device)
        return DataBundle(
            name=f"{self.name}:{tag}",
            x_train=x,
            y_train=y,
            x_val=x[:0] if x_val is None else x_val,
            y_val=none,
            x_test=self.x_test,
            y_test=self.y_test,
            num_classes=self.num_classes,
            class_names=self.class_names,
            mean=self.mean,
            std=self.std,
            student_idx=torch.arange(len(y), device=y.device),
            student_val_idx=none,
        )

    def to(self, device: torch.device) -> DataBundle:
        for k, v in vars(self).items():
            if isinstance(v, torch.Tensor):
                setattr(self, k, v.to(device))
        for tensors in self.named_views.values():
            tensors.update({k: v.to(device) for k, v in tensors.items()})
        return self


def _split_counts(n: int, cfg) -> int:
    """Validation images out of ``n``: a fraction (capped at ``val_max``) or a count. Each
    impossible setting says which override fixes it."""
    val_size, cap = float(cfg.val_size), int(getattr(cfg, "val_max", 0) or 0)
    if val_size < 1:
        n_val = int(round(val_size * n))
        n_val = min(n_val, cap) if cap else n_val
    else:
        n_val = int(val_size)
    pool = f"{n} images" + (
        f" after dataset.limit_train={cfg.limit_train}" if cfg.limit_train else ""
    )
    if n_val >= n:
        raise DataError(
            f"dataset.val_size={val_size:g} leaves no training data (the training split has "
            f"{pool}); try dataset.val_size=0.1"
        )
    if n_val == 0:
        fix = "0.1" if n >= 5 else "0.5"
        raise DataError(
            f"dataset.val_size={val_size:g} leaves no validation images (the training split has "
            f"{pool}) and model selection needs some; try dataset.val_size={fix}"
        )
    return n_val


def _too_few(what: str, n: int, classes: int, fix: str) -> None:
    """Fewer training images than classes: some class cannot even appear once."""
    if n < classes:
        raise DataError(f"{what} leaves {n} training images for {classes} classes; try {fix}")


def _class_filter(y: np.ndarray, cfg) -> np.ndarray:
    keep = np.ones(len(y), dtype=bool)
    if cfg.omit_classes:
        keep &= ~np.isin(y, list(cfg.omit_classes))
    if cfg.keep_classes:
        keep &= np.isin(y, list(cfg.keep_classes))
    return keep


def _channel_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and population std of (N, C, H, W), accumulated in float64 over one
    contiguous channel at a time: same values as a reduction over axes (0, 2, 3), several
    times faster (numpy's strided multi-axis float64 variance took seconds on Fashion-MNIST)."""
    chans = [np.ascontiguousarray(x[:, i]).reshape(-1) for i in range(x.shape[1])]
    mean = np.array([c.mean(dtype=np.float64) for c in chans], dtype=np.float32)
    std = np.array([c.std(dtype=np.float64) for c in chans], dtype=np.float32)
    return mean, std


def _split(raw: RawData | ExternalRaw, cfg) -> tuple[np.ndarray, np.ndarray]:
    """Train and validation rows of ``raw``'s training split (fixed ``split_seed``; none for
    validation when the data set has its own validation split); limits the test split in
    place when ``limit_test`` is set."""
    perm = np.random.default_rng(cfg.split_seed).permutation(len(raw.y_train))
    if cfg.limit_train:
        perm = perm[: cfg.limit_train]
    if cfg.limit_test:
        keep = np.sort(
            np.random.default_rng(cfg.split_seed).permutation(len(raw.y_test))[: cfg.limit_test]
        )
        raw.x_test, raw.y_test = take(raw.x_test, keep), raw.y_test[keep]
        for name, (tr, te) in (getattr(raw, "views", None) or {}).items():
            raw.views[name] = (tr, te[keep])
    if getattr(raw, "x_val", None) is not None:
        return np.sort(perm), np.zeros(0, np.int64)
    n_val = _split_counts(len(perm), cfg)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def _student_rows(y_tr: np.ndarray, y_va: np.ndarray, cfg) -> tuple[np.ndarray, np.ndarray]:
    """The student's transfer set (class restriction, then a fixed random subset) and its
    validation rows."""
    s_idx = np.flatnonzero(_class_filter(y_tr, cfg))
    if len(s_idx) == 0:
        raise DataError("the student's transfer set is empty: every class is omitted")
    if cfg.train_fraction < 1:
        k = max(1, int(round(cfg.train_fraction * len(s_idx))))
        classes = len(np.unique(y_tr[s_idx]))
        need = f"{math.ceil(1000 * classes / len(s_idx)) / 1000:g}"  # rounded up: enough
        _too_few(
            f"dataset.train_fraction={cfg.train_fraction:g}",
            k,
            classes,
            f"dataset.train_fraction={need}",
        )
        sub_rng = np.random.default_rng(cfg.split_seed + 1)
        s_idx = np.sort(sub_rng.choice(s_idx, size=k, replace=False))
    return s_idx, np.flatnonzero(_class_filter(y_va, cfg))


def unlabelled_mode(value) -> str:
    """dataset.unlabelled_transfer as on, off or auto (a bool, or true/false typed on the
    command line into the string field, reads as on/off)."""
    mode = str(value).lower()
    return {"true": "on", "false": "off"}.get(mode, mode)


def _unlabelled_rows(y_tr: np.ndarray, s_idx: np.ndarray, cfg) -> torch.Tensor | None:
    """dataset.unlabelled_transfer: the transfer set's rows left out of the labelled subset."""
    # "auto" is resolved by the job's checks (it depends on the method); read here as off
    if unlabelled_mode(getattr(cfg, "unlabelled_transfer", "off")) != "on":
        return None
    if cfg.train_fraction >= 1:
        return None
    rest = np.setdiff1d(np.flatnonzero(_class_filter(y_tr, cfg)), s_idx)
    return torch.from_numpy(rest)


def _normaliser(mean: np.ndarray, std: np.ndarray):
    def norm(a: np.ndarray, own: bool = False) -> torch.Tensor:
        """(a - mean) / std; in place when ``a`` is this function's own copy."""
        out = np.subtract(a, mean[None, :, None, None], out=a if own else None)
        return torch.from_numpy(np.divide(out, std[None, :, None, None], out=out))

    return norm


def _check_classes(cfg, num_classes: int) -> None:
    for c in list(cfg.omit_classes) + list(cfg.keep_classes):
        if not 0 <= c < num_classes:
            raise DataError(
                f"class {c} is out of range for {cfg.name} (classes 0..{num_classes - 1})"
            )


def _external_bundle(cfg, spec: DatasetSpec, hints: LoadHints) -> DataBundle:
    """The user's own data: uint8 or streamed rows, normalised per batch (kdrun.data.rows)."""
    raw = load_external(cfg.name, cfg, hints)
    _check_classes(cfg, raw.num_classes)
    tr_i, val_i = _split(raw, cfg)
    rows = split_rows(raw, tr_i, val_i)
    y_tr = raw.y_train[tr_i]
    s_idx, sv_idx = _student_rows(y_tr, rows["y_val"], cfg)
    first = raw.x_train if isinstance(raw.x_train, np.ndarray) else None
    pixel_max = spec.pixel_max if first is None or first.dtype == np.uint8 else 1.0
    content = {
        "fingerprint": raw.fingerprint,
        "mean": [float(v) for v in rows["mean"]],
        "std": [float(v) for v in rows["std"]],
        "shape": list(rows["x_train"].shape[1:]),
    }
    return DataBundle(
        name=cfg.name,
        x_train=rows["x_train"],
        y_train=torch.from_numpy(y_tr),
        x_val=rows["x_val"],
        y_val=torch.from_numpy(rows["y_val"]),
        x_test=rows["x_test"],
        y_test=torch.from_numpy(raw.y_test),
        num_classes=raw.num_classes,
        class_names=list(raw.class_names),
        mean=rows["mean"],
        std=rows["std"],
        student_idx=torch.from_numpy(s_idx),
        student_val_idx=torch.from_numpy(sv_idx),
        augment=bool(cfg.augment),
        crop_padding=int(cfg.crop_padding),
        hflip=bool(cfg.hflip),
        extra={"content": content, "pixel_max": pixel_max, "load": raw.info},
        sources=raw.sources,
        unlabelled_idx=_unlabelled_rows(y_tr, s_idx, cfg),
    )


def load_data(
    cfg, device: torch.device | str = "cpu", hints: LoadHints | None = None
) -> DataBundle:
    """Load, split (fixed ``split_seed``), normalise with train statistics, move to device.
    ``hints``: a pretrained teacher's preprocessing and the memory limit (the user's data)."""
    if cfg.name not in DATASETS:
        raise DataError(
            f"unknown dataset '{cfg.name}'; choose one of: {', '.join(sorted(DATASETS))}"
        )
    spec = DATASETS[cfg.name]
    if spec.external:
        return _external_bundle(cfg, spec, hints or LoadHints()).to(torch.device(device))
    raw = spec.load(cfg)
    n_cls = len(raw.class_names) if raw.class_names else spec.num_classes  # synthetic: its file's
    _check_classes(cfg, n_cls)
    tr_i, val_i = _split(raw, cfg)
    if cfg.limit_train:
        _too_few(
            f"dataset.limit_train={cfg.limit_train}",
            len(tr_i),
            n_cls,
            f"dataset.limit_train={20 * n_cls} or 0 (all)",
        )
    x_tr, y_tr = raw.x_train[tr_i], raw.y_train[tr_i]
    x_va, y_va = raw.x_train[val_i], raw.y_train[val_i]
    # Normalisation statistics from the training split only (never val/test).
    mean, std = _channel_stats(x_tr)
    std = std + 1e-6
    norm = _normaliser(mean, std)
    s_idx, sv_idx = _student_rows(y_tr, y_va, cfg)
    bundle = DataBundle(
        name=cfg.name,
        x_train=norm(x_tr, own=True),  # x_tr, x_va: copies made by the indexing above
        y_train=torch.from_numpy(y_tr),
        x_val=norm(x_va, own=True),
        y_val=torch.from_numpy(y_va),
        x_test=norm(raw.x_test),
        y_test=torch.from_numpy(raw.y_test),
        num_classes=n_cls,
        class_names=list(raw.class_names or spec.class_names),
        mean=torch.from_numpy(mean),
        std=torch.from_numpy(std),
        student_idx=torch.from_numpy(s_idx),
        student_val_idx=torch.from_numpy(sv_idx),
        augment=bool(cfg.augment),
        crop_padding=int(cfg.crop_padding),
        hflip=bool(cfg.hflip),
        extra={"pixel_max": spec.pixel_max},
        sources=raw.sources,
        unlabelled_idx=_unlabelled_rows(y_tr, s_idx, cfg),
    )
    if raw.fingerprint:
        bundle.extra["content"] = {"fingerprint": raw.fingerprint}
    if raw.views:
        bundle.view = next(iter(raw.views))
        bundle.named_views = {
            name: _view_split(tr, te, tr_i, val_i) for name, (tr, te) in list(raw.views.items())[1:]
        }
    return bundle.to(torch.device(device))


def _view_split(
    x_train: np.ndarray, x_test: np.ndarray, tr_i: np.ndarray, val_i: np.ndarray
) -> dict[str, torch.Tensor]:
    """A named view's splits, the rows of the data set's own view, normalised with its own
    training statistics."""
    x_tr, x_va = x_train[tr_i], x_train[val_i]
    mean, std = _channel_stats(x_tr)
    std = std + 1e-6
    norm = _normaliser(mean, std)
    return {
        "x_train": norm(x_tr, own=True),
        "x_val": norm(x_va, own=True),
        "x_test": norm(x_test),
        "mean": torch.from_numpy(mean),
        "std": torch.from_numpy(std),
    }


# --------------------------------------------------------------------------- batching


def batch_indices(
    idx: torch.Tensor, batch_size: int, generator: torch.Generator | None, shuffle: bool = True
) -> Iterator[torch.Tensor]:
    """Yield index tensors (on idx's device); the order depends only on the CPU generator."""
    if shuffle:
        order = torch.randperm(len(idx), generator=generator).to(idx.device)
        idx = idx[order]
    starts = list(range(0, len(idx), batch_size))
    if len(starts) > 1 and len(idx) - starts[-1] == 1:
        starts.pop()  # a last batch of one joins the one before: BatchNorm cannot train on one
    for i, start in enumerate(starts):
        stop = starts[i + 1] if i + 1 < len(starts) else len(idx)
        yield idx[start:stop]


def _to(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small CPU tensor on ``device``: through pinned memory without blocking on CUDA."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def augment_batch(
    x: torch.Tensor,
    padding: int,
    hflip: bool,
    generator: torch.Generator | None,
    part: tuple[int, int, int] | None = None,
) -> torch.Tensor:
    """Random crop with zero padding and random horizontal flip, for a whole batch at once.

    The offsets and flips are drawn on the CPU generator (the same draws on every device).
    ``part`` = (start, stop, n): ``x`` is rows start..stop of a batch of n (one rank's slice
    of a global batch): the draws are made for all n rows and this slice's are used, so the
    generator advances as in one process.
    """
    b, _, h, w = x.shape
    start, stop, n = part if part is not None else (0, b, b)
    if padding > 0:
        padded = torch.nn.functional.pad(x, (padding, padding, padding, padding))
        oy = _to(torch.randint(0, 2 * padding + 1, (n,), generator=generator)[start:stop], x.device)
        ox = _to(torch.randint(0, 2 * padding + 1, (n,), generator=generator)[start:stop], x.device)
        rows = (oy[:, None] + torch.arange(h, device=x.device))[:, :, None]  # (B, H, 1)
        cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, :]  # (B, 1, W)
        bi = torch.arange(b, device=x.device)[:, None, None]
        x = padded.permute(0, 2, 3, 1)[bi, rows, cols].permute(0, 3, 1, 2)
    if hflip:
        flip = _to(torch.rand(n, generator=generator)[start:stop] < 0.5, x.device)
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    # The gather above leaves NHWC memory: keep it (channels_last convolutions want it);
    # a plain .contiguous() would copy it back to NCHW.
    return x.contiguous(memory_format=torch.channels_last)
