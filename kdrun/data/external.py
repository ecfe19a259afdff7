"""The user's own data: an image folder, arrays in an ``.npz``, a Hugging Face ``datasets`` set.

Images are decoded once into uint8 (``U8Rows``, normalised per batch), or, when they do not
fit (``dataset.in_memory=false`` or above ``runtime.max_data_memory``), kept as a file list
decoded per batch (``FileRows``). Every loader returns a fingerprint of the data's content
(file list + sizes + mtimes, or the file's hash) that goes into every store key, so two
folders under one name never share a stored teacher or logits.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from kdrun.data.registry import DATASETS, register_dataset
from kdrun.data.rows import GRAY_MODES, FileRows, U8Rows, decode_image, image_array
from kdrun.errors import ConfigError, DataError, one_line
from kdrun.store import sha256_file
from kdrun.store.fingerprint import named_under

log = logging.getLogger("kdrun")

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
_SIZE = re.compile(r"^\s*([\d.]+)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)


@dataclass
class LoadHints:
    """What the run adds to the data set's own config: a pretrained teacher's preprocessing
    (used where ``dataset.image_size``/``mean``/``std`` are unset) and the memory limit."""

    image_size: tuple[int, int] | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    max_data_memory: int = 8 << 30


@dataclass
class ExternalRaw:
    """A loaded external data set. ``x_*`` are float32 arrays (no image decoding: npz), uint8
    (N, C, H, W) arrays, or ``FileRows``; ``sums``/``sqsums`` are per-image channel sums of
    the training split in [0, 1] units, so statistics over any subset need no second pass."""

    x_train: Any
    y_train: np.ndarray
    x_test: Any
    y_test: np.ndarray
    class_names: list[str]
    fingerprint: str
    x_val: Any = None
    y_val: np.ndarray | None = None
    sums: np.ndarray | None = None
    sqsums: np.ndarray | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, str] | None = None  # as RawData.sources: every file read, by name

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def parse_size(text: str | int | float) -> int:
    """'8GB', '512MiB', '2e9' -> bytes."""
    m = _SIZE.match(str(text))
    if not m:
        raise ConfigError(f"runtime.max_data_memory={text} is not a size; write e.g. 8GB")
    unit = (m.group(2) or "").lower().rstrip("b").rstrip("i")
    return int(float(m.group(1)) * 1024 ** " kmgt".index(unit or " "))


def files_fingerprint(root: Path, paths: Sequence[Path]) -> str:
    """sha256 over (relative path, size, mtime) of every file: content changes change it."""
    h = hashlib.sha256()
    for p in paths:
        st = p.stat()
        h.update(f"{p.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


# --------------------------------------------------------------------------- image folders


def _class_dirs(split_dir: Path) -> list[str]:
    return sorted(d.name for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith("."))


def _list_split(split_dir: Path, classes: list[str]) -> tuple[list[Path], np.ndarray]:
    extra = sorted(set(_class_dirs(split_dir)) - set(classes))
    if extra:
        raise DataError(
            f"{split_dir} has class folder(s) {extra[:3]} absent from train/; every "
            f"class needs training images"
        )
    paths, labels = [], []
    for i, c in enumerate(classes):
        d = split_dir / c
        if not d.is_dir():
            continue
        files = sorted(p for p in d.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        paths += files
        labels += [i] * len(files)
    if not paths:
        raise DataError(f"{split_dir} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    return paths, np.asarray(labels, np.int64)


def _headers(paths: list[Path], workers: int) -> list[tuple[str, tuple[int, int]] | None]:
    """(mode, (H, W)) of every image from its header alone; None for an unreadable one."""

    def one(p: Path) -> tuple[str, tuple[int, int]] | None:
        try:
            with Image.open(p) as im:
                return im.mode, (im.size[1], im.size[0])
        except Exception:
            return None

    with ThreadPoolExecutor(max(1, workers)) as pool:
        return list(pool.map(one, paths, chunksize=256))


class BadImages:
    """Unreadable images: skipped and counted (one warning), or the first one is an error."""

    def __init__(self, on_bad: str):
        if on_bad not in ("skip", "error"):
            raise ConfigError(f"dataset.on_bad_image={on_bad}; choose skip or error")
        self.on_bad, self.paths = on_bad, []

    def add(self, path: Path, why: str) -> None:
        if self.on_bad == "error":
            raise DataError(
                f"cannot read image {path} ({why}); fix or delete it, or set "
                f"dataset.on_bad_image=skip"
            )
        self.paths.append(path)

    def report(self) -> None:
        if self.paths:
            log.warning(
                "skipped %d unreadable image(s) (first: %s); dataset.on_bad_image=error "
                "makes this an error",
                len(self.paths),
                self.paths[0],
            )


def _image_size(cfg: Any, hints: LoadHints, sizes: list[tuple[int, int]]) -> tuple[int, int]:
    if cfg.get("image_size"):
        s = cfg.image_size
        return (int(s[0]), int(s[1])) if isinstance(s, Sequence) else (int(s), int(s))
    if hints.image_size:
        return tuple(hints.image_size)  # type: ignore[return-value]
    distinct = sorted(set(sizes))
    if len(distinct) > 1:
        raise DataError(
            f"images differ in size ({distinct[0]} ... {distinct[-1]}, HxW); set "
            f"dataset.image_size=N to resize them all to NxN"
        )
    return distinct[0]


def _decode_all(
    paths: list[Path],
    channels: int,
    size: tuple[int, int],
    keep: bool,
    workers: int,
    bad: BadImages,
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray, np.ndarray]:
    """Decode every image once: (uint8 array if ``keep``, ok mask, channel sums, squared sums)."""
    n = len(paths)
    out = np.empty((n, channels, *size), np.uint8) if keep else None
    ok = np.ones(n, bool)
    sums, sq = np.zeros((n, channels)), np.zeros((n, channels))

    def one(i: int) -> None:
        try:
            a = decode_image(str(paths[i]), channels, size)
        except Exception as e:  # truncated, corrupt: PIL raises many types
            ok[i] = False
            return one_line(e, 80)
        if out is not None:
            out[i] = a
        f = a.reshape(channels, -1).astype(np.float64) / 255.0
        sums[i], sq[i] = f.sum(1), (f * f).sum(1)
        return None

    with ThreadPoolExecutor(max(1, workers)) as pool:
        whys = list(pool.map(one, range(n), chunksize=256))
    for i in np.flatnonzero(~ok):
        bad.add(paths[i], whys[i])
    return out, ok, sums, sq


def _scan_folder(cfg: Any) -> tuple[Path, list[str], dict[str, tuple[list[Path], np.ndarray]]]:
    """The root, its classes and every split's (image paths, labels)."""
    if not cfg.get("root"):
        raise ConfigError("dataset=image_folder needs dataset.root=DIR (with train/ and test/)")
    root = Path(cfg.root).expanduser()
    for split in ("train", "test"):
        if not (root / split).is_dir():
            raise DataError(
                f"{root / split} is not a directory; dataset.root needs train/ and "
                f"test/, each with one folder of images per class"
            )
    classes = _class_dirs(root / "train")
    if not classes:
        raise DataError(f"{root / 'train'} has no class folders (train/<class>/<image>)")
    splits = ["train", "test"] + (["val"] if (root / "val").is_dir() else [])
    listed = {s: _list_split(root / s, classes) for s in splits}
    # a class folder without training images would be a class no model can learn
    counts = np.bincount(listed["train"][1], minlength=len(classes))
    empty = [c for c, n in zip(classes, counts, strict=True) if n == 0]
    if empty:
        raise DataError(
            f"{root / 'train'}: class folder(s) {empty[:3]} hold no images "
            f"({', '.join(IMAGE_EXTENSIONS)}); add images or remove the folder(s)"
        )
    return root, classes, listed


@dataclass
class _Decode:
    """How every image of a folder is decoded: channels, size, kept in memory or streamed."""

    channels: int
    size: tuple[int, int]
    in_memory: bool
    workers: int
    bad: BadImages


def _load_split(
    paths: list[Path], y: np.ndarray, heads: list, how: _Decode, where: Path
) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray]:
    """One split's rows (uint8 array or FileRows), labels and per-image channel sums."""
    for p, h in zip(paths, heads, strict=True):
        if h is None:
            how.bad.add(p, "not an image PIL can open")
    good = [i for i, h in enumerate(heads) if h is not None]
    paths, y = [paths[i] for i in good], y[good]
    x, ok, su, sq = _decode_all(paths, how.channels, how.size, how.in_memory, how.workers, how.bad)
    paths, y = [p for p, k in zip(paths, ok, strict=True) if k], y[ok]
    if not len(y):
        raise DataError(f"{where} has no readable image")
    if how.in_memory:
        return x[ok], y, su[ok], sq[ok]
    unit = torch.zeros(how.channels), torch.ones(how.channels)  # statistics: set after split
    rows = FileRows([str(p) for p in paths], how.channels, how.size, *unit, how.workers)
    return rows, y, su[ok], sq[ok]


@register_dataset("image_folder", 0, [], external=True)
def load_image_folder(cfg: Any, hints: LoadHints) -> ExternalRaw:
    """``DIR/train/<class>/*``, ``DIR/test/<class>/*`` and optionally ``DIR/val/<class>/*``."""
    root, classes, listed = _scan_folder(cfg)
    workers = int(cfg.get("num_workers", 2) or 1)
    heads = {s: _headers(paths, workers) for s, (paths, _) in listed.items()}
    found = [h for hs in heads.values() for h in hs if h is not None]
    channels = 1 if found and {h[0] for h in found} <= GRAY_MODES else 3
    size = _image_size(cfg, hints, [h[1] for h in found])
    n_all = sum(len(hs) for hs in heads.values())
    fits = n_all * channels * size[0] * size[1] <= hints.max_data_memory
    how = _Decode(
        channels,
        size,
        bool(cfg.get("in_memory", True)) and fits,
        workers,
        BadImages(str(cfg.get("on_bad_image", "skip"))),
    )
    out = {s: _load_split(*listed[s], heads[s], how, root / s) for s in listed}
    how.bad.report()
    read = [p for paths, _ in listed.values() for p in paths]
    fp = files_fingerprint(root, read)
    val = out["val"][:2] if "val" in out else (None, None)
    return ExternalRaw(
        *out["train"][:2],
        *out["test"][:2],
        classes,
        fp,
        *val,
        sums=out["train"][2],
        sqsums=out["train"][3],
        info={
            "channels": channels,
            "image_size": list(size),
            "in_memory": how.in_memory,
            "skipped_images": len(how.bad.paths),
        },
        sources=named_under(root, read),
    )


# --------------------------------------------------------------------------- arrays (.npz)

_NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


def _as_images(a: np.ndarray, name: str, path: Path) -> np.ndarray:
    """(N, F) tabular -> (N, F, 1, 1) (one channel per feature: standardised per feature);
    (N, H, W) -> (N, 1, H, W); NHWC -> NCHW. uint8 stays uint8 (images), the rest float32."""
    if a.ndim == 2:
        a = a[:, :, None, None]
    elif a.ndim == 3:
        a = a[:, None]
    elif a.ndim == 4 and a.shape[-1] in (1, 3) and a.shape[1] not in (1, 3):
        a = a.transpose(0, 3, 1, 2)
    elif a.ndim != 4:
        raise DataError(
            f"{path}: {name} has shape {a.shape}; give (N, features), (N, H, W), "
            f"(N, C, H, W) or (N, H, W, C)"
        )
    if a.dtype == np.uint8:
        return np.ascontiguousarray(a)
    if not np.issubdtype(a.dtype, np.number) or a.dtype.kind == "c":
        raise DataError(f"{path}: {name} has dtype {a.dtype}; give numbers")
    a = np.ascontiguousarray(a, dtype=np.float32)
    if not np.isfinite(a).all():
        raise DataError(f"{path}: {name} contains NaN or inf; clean it first")
    return a


def _labels(y: np.ndarray, n: int, name: str, path: Path) -> np.ndarray:
    if y.ndim != 1 or len(y) != n or y.dtype.kind not in "iu":
        raise DataError(
            f"{path}: {name} must be {n} integer labels (got shape {y.shape}, dtype {y.dtype})"
        )
    return y.astype(np.int64)


def _is_zip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) in (b"PK\x03\x04", b"PK\x05\x06")  # an archive, or an empty one


@register_dataset("tensors", 0, [], external=True)
def load_tensors(cfg: Any, hints: LoadHints) -> ExternalRaw:
    """``x_train, y_train, x_test, y_test`` (+ ``x_val, y_val``, ``class_names``) from one .npz."""
    if not cfg.get("path"):
        raise ConfigError("dataset=tensors needs dataset.path=FILE.npz")
    path = Path(cfg.path).expanduser()
    if path.is_file() and not _is_zip(path):  # numpy would take it for a pickle
        raise DataError(
            f"dataset.path={path} is not a .npz file (not a zip archive); write one with "
            f"numpy.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)"
        )
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise DataError(f"dataset.path={path} does not exist") from None
    except Exception as e:  # not a zip, pickled objects, truncated
        raise DataError(
            f"dataset.path={path} is not a readable .npz of plain arrays ({one_line(e, 100)})"
        ) from None
    missing = [k for k in _NPZ_KEYS if k not in arrays]
    if missing or ("x_val" in arrays) != ("y_val" in arrays):
        raise DataError(
            f"{path} lacks {missing or ['x_val/y_val pair']}; it needs arrays "
            f"{', '.join(_NPZ_KEYS)} (optional x_val, y_val, class_names)"
        )
    splits = ["train", "test"] + (["val"] if "x_val" in arrays else [])
    xs = {s: _as_images(arrays[f"x_{s}"], f"x_{s}", path) for s in splits}
    ys = {s: _labels(arrays[f"y_{s}"], len(xs[s]), f"y_{s}", path) for s in splits}
    shapes = {xs[s].shape[1:] for s in splits}
    if len(shapes) > 1:
        raise DataError(f"{path}: the splits' samples differ in shape {sorted(shapes)}")
    names = (
        [str(c) for c in arrays["class_names"]]
        if "class_names" in arrays
        else [str(i) for i in range(int(max(y.max() for y in ys.values())) + 1)]
    )
    for s in splits:
        if ys[s].min() < 0 or ys[s].max() >= len(names):
            raise DataError(f"{path}: y_{s} has labels outside 0..{len(names) - 1}")
    return ExternalRaw(
        xs["train"],
        ys["train"],
        xs["test"],
        ys["test"],
        names,
        sha256_file(path)[:24],
        xs.get("val"),
        ys.get("val"),
        info={"in_memory": True},
        sources={"arrays.npz": str(path)},
    )


# --------------------------------------------------------------------------- datasets (HF)


def _hf_splits(datasets: Any, d: Path) -> dict[str, Any]:
    """A DatasetDict saved with save_to_disk, or a folder of <split>*.parquet files."""
    if (d / "dataset_dict.json").is_file():
        return dict(datasets.load_from_disk(str(d)))
    files = sorted(d.rglob("*.parquet"))
    by_split: dict[str, list[str]] = {}
    for f in files:
        for split, names in (
            ("train", ("train",)),
            ("test", ("test",)),
            ("validation", ("val", "validation")),
        ):
            if f.name.startswith(names) or f.parent.name in names:
                by_split.setdefault(split, []).append(str(f))
    if not by_split:
        raise DataError(
            f"dataset.path={d} is neither a save_to_disk DatasetDict nor a folder "
            f"of train*/test* parquet files"
        )
    return dict(datasets.load_dataset("parquet", data_files=by_split))


def _hf_images(ds: Any, col: str, channels: int, size: tuple[int, int]) -> np.ndarray:
    out = np.empty((len(ds), channels, *size), np.uint8)
    for i, im in enumerate(ds[col]):
        im = im if isinstance(im, Image.Image) else Image.fromarray(np.asarray(im, np.uint8))
        out[i] = image_array(im, channels, size)
    return out


def load_hf_dataset(cfg: Any, hints: LoadHints, datasets: Any) -> ExternalRaw:
    """A ``datasets`` image classification set; images decoded once into uint8."""
    if not cfg.get("path") or not Path(cfg.path).expanduser().is_dir():
        raise ConfigError(f"dataset=hf needs dataset.path=DIR (got {cfg.get('path')})")
    d = Path(cfg.path).expanduser()
    try:
        splits = _hf_splits(datasets, d)
    except DataError:
        raise
    except Exception as e:
        raise DataError(
            f"dataset.path={d} cannot be read by datasets ({one_line(e, 120)})"
        ) from None
    if "train" not in splits or "test" not in splits:
        raise DataError(f"dataset.path={d} has splits {sorted(splits)}; it needs train and test")
    img, lab = cfg.get("image_column", "image"), cfg.get("label_column", "label")
    for col in (img, lab):
        if col not in splits["train"].column_names:
            raise DataError(
                f"dataset.path={d} has no column '{col}' (columns: "
                f"{splits['train'].column_names}); set dataset.image_column / "
                f"dataset.label_column"
            )
    feat = splits["train"].features[lab]
    first = splits["train"][0][img]
    first = first if isinstance(first, Image.Image) else Image.fromarray(np.asarray(first))
    channels = 1 if first.mode in GRAY_MODES else 3
    size = _image_size(cfg, hints, [(first.size[1], first.size[0])])
    val = "validation" if "validation" in splits else None
    xs = {s: _hf_images(splits[s], img, channels, size) for s in ("train", "test", val) if s}
    ys = {s: np.asarray(splits[s][lab], np.int64) for s in xs}
    names = (
        list(feat.names)
        if hasattr(feat, "names")
        else [str(i) for i in range(int(ys["train"].max()) + 1)]
    )
    paths = sorted(p for p in d.rglob("*") if p.is_file())
    return ExternalRaw(
        xs["train"],
        ys["train"],
        xs["test"],
        ys["test"],
        names,
        files_fingerprint(d, paths),
        xs.get(val),
        ys.get(val),
        info={"channels": channels, "image_size": list(size)},
        sources=named_under(d, paths),
    )


# --------------------------------------------------------------------------- splits -> rows


def take(x: Any, idx: np.ndarray) -> Any:
    """Rows ``idx`` of an array or a row source."""
    return x.take(idx) if isinstance(x, (U8Rows, FileRows)) else x[idx]


def _stats(raw: ExternalRaw, x_tr: Any, tr_i: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean/std of the training rows, in the units the model sees ([0, 1] for
    images): from the decode pass's per-image sums when there are some."""
    if raw.sums is not None:
        n_pix = float(np.prod(x_tr.shape[2:])) * len(tr_i)
        mean = raw.sums[tr_i].sum(0) / n_pix
        var = raw.sqsums[tr_i].sum(0) / n_pix - mean**2
    else:
        a = x_tr.astype(np.float64) / (255.0 if x_tr.dtype == np.uint8 else 1.0)
        mean, var = a.mean((0, 2, 3)), a.var((0, 2, 3))
    return mean.astype(np.float32), np.sqrt(np.maximum(var, 0)).astype(np.float32)


def split_rows(
    raw: ExternalRaw, tr_i: np.ndarray, val_i: np.ndarray, test_i: np.ndarray | None = None
) -> dict[str, Any]:
    """Train/val/test row sources, normalised with the training rows' statistics (or the
    preset mean/std: the user's, or a pretrained teacher's)."""
    x_tr = take(raw.x_train, tr_i)
    if raw.x_val is None:
        x_va, y_va = take(raw.x_train, val_i), raw.y_train[val_i]
    else:
        x_va, y_va = raw.x_val, raw.y_val
    x_te = raw.x_test if test_i is None else take(raw.x_test, test_i)
    if raw.mean is not None and raw.std is not None:
        mean, std = np.asarray(raw.mean, np.float32), np.asarray(raw.std, np.float32)
    else:
        mean, std = _stats(raw, x_tr, tr_i)
        std = std + 1e-6
    m, s = torch.from_numpy(mean), torch.from_numpy(std)

    def rows(x: Any) -> Any:
        if isinstance(x, FileRows):
            return x.with_stats(m, s)
        if x.dtype == np.uint8:
            return U8Rows(torch.from_numpy(np.ascontiguousarray(x)), m, s)
        return torch.from_numpy((x - mean[None, :, None, None]) / std[None, :, None, None])

    return {
        "x_train": rows(x_tr),
        "x_val": rows(x_va),
        "y_val": y_va,
        "x_test": rows(x_te),
        "mean": m,
        "std": s,
    }


def hints_mean_std(raw: ExternalRaw, cfg: Any, hints: LoadHints) -> None:
    """dataset.mean/std, else a pretrained teacher's, else None (computed on train)."""
    mean, std = cfg.get("mean"), cfg.get("std")
    if mean is None and std is None:
        mean, std = hints.mean, hints.std
    if (mean is None) != (std is None):
        raise ConfigError("set both dataset.mean and dataset.std, or neither")
    channels = raw.x_train.shape[1]
    if mean is not None:
        mean, std = list(mean), list(std)
        if len(mean) == 3 and channels == 1:  # an RGB model's statistics for gray images
            mean, std = [float(np.mean(mean))], [float(np.mean(std))]
        if len(mean) != channels or len(std) != channels or min(std) <= 0:
            raise ConfigError(
                f"dataset.mean/std need {channels} value(s) each, std > 0 (got {mean}, {std})"
            )
    raw.mean, raw.std = mean, std


@register_dataset("hf", 0, [], external=True)
def load_hf(cfg: Any, hints: LoadHints) -> ExternalRaw:
    try:
        import datasets  # optional extra: imported only when asked for
    except ImportError:
        raise ConfigError(
            "dataset=hf needs the datasets package: pip install 'kdrun[hf]'"
        ) from None
    datasets.disable_progress_bars()  # stderr carries kdrun's one-line errors only
    return load_hf_dataset(cfg, hints, datasets)


def load_external(name: str, cfg: Any, hints: LoadHints) -> ExternalRaw:
    """Load an external data set and settle its normalisation statistics."""
    raw = DATASETS[name].load(cfg, hints)
    hints_mean_std(raw, cfg, hints)
    return raw
