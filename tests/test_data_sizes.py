"""Count-valued defaults on data sets of any size: every default works on a small data set, and
every impossible setting fails in one line that names the override fixing it."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from kdrun.config import DatasetConfig
from kdrun.data import DATASETS, batch_indices, load_data
from kdrun.data.registry import DatasetSpec, RawData
from kdrun.errors import DataError
from tests.conftest import REPO, read_json

SIZED = "sized_test_set"


def _raw(n_train: int, n_test: int = 50, classes: int = 10):
    def load(_cfg) -> RawData:
        rng = np.random.default_rng(0)
        y = np.arange(n_train, dtype=np.int64) % classes
        yt = np.arange(n_test, dtype=np.int64) % classes
        x = rng.random((n_train, 1, 4, 4), dtype=np.float32)
        xt = rng.random((n_test, 1, 4, 4), dtype=np.float32)
        return RawData(x, y, xt, yt)

    return load


@pytest.fixture
def sized(monkeypatch):
    """sized(n_train, **dataset overrides) -> DataBundle of a synthetic n-image set."""

    def load(n_train: int, **kw):
        spec = DatasetSpec(_raw(n_train), 10, [str(i) for i in range(10)])
        monkeypatch.setitem(DATASETS, SIZED, spec)
        return load_data(OmegaConf.structured(DatasetConfig(name=SIZED, **kw)))

    return load


def _shipped(name: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "dataset" / f"{name}.yaml"))


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10", "cifar100"])
def test_shipped_val_default_is_min_5000_and_10_percent(sized, name):
    conf = {k: _shipped(name)[k] for k in ("val_size", "val_max")}
    assert len(sized(60000, **conf).y_val) == 5000  # the full set: as before
    d = sized(4000, **conf)  # a 4,000-image root: 10%
    assert (len(d.y_val), len(d.y_train)) == (400, 3600)


def test_val_size_count_too_large_names_the_fix(sized):
    with pytest.raises(DataError) as e:
        sized(4000, val_size=5000)
    msg = str(e.value)
    assert "dataset.val_size=5000 leaves no training data" in msg  # a count, not 5000.0
    assert "4000 images" in msg and msg.endswith("try dataset.val_size=0.1")
    assert len(sized(4000, val_size=0.1).y_val) == 400  # the fix works


def test_val_size_leaving_no_validation_names_the_fix(sized):
    with pytest.raises(DataError, match=r"no validation images.*try dataset.val_size=0.1"):
        sized(100, val_size=0.001)
    with pytest.raises(DataError, match="no validation images"):
        sized(100, val_size=0)


def test_limit_train_below_the_class_count_names_the_fix(sized):
    with pytest.raises(DataError) as e:
        sized(1000, limit_train=8, val_size=2)
    assert "dataset.limit_train=8 leaves 6 training images for 10 classes" in str(e.value)
    assert "try dataset.limit_train=200 or 0 (all)" in str(e.value)
    assert len(sized(1000, limit_train=200, val_size=0.1).y_train) == 180


def test_limits_larger_than_the_data_keep_everything(sized):
    d = sized(300, limit_train=10**6, limit_test=10**6, val_size=0.1)
    assert (len(d.y_train), len(d.y_val), len(d.y_test)) == (270, 30, 50)


def test_train_fraction_below_the_class_count_names_a_fraction_that_works(sized):
    with pytest.raises(DataError) as e:
        sized(1000, val_size=0.1, train_fraction=0.005)  # 4-5 images for 10 classes
    msg = str(e.value)
    assert "dataset.train_fraction=0.005 leaves" in msg and "for 10 classes" in msg
    fix = float(msg.rsplit("dataset.train_fraction=", 1)[1])
    assert len(sized(1000, val_size=0.1, train_fraction=fix).student_idx) >= 10


def test_omitted_classes_count_against_the_fraction_check(sized):
    # 9 classes remain in the transfer set: 9 images are enough, 8 are not.
    d = sized(1000, val_size=0.1, omit_classes=[3], train_fraction=9 / 810)
    assert len(d.student_idx) == 9
    with pytest.raises(DataError, match="for 9 classes"):
        sized(1000, val_size=0.1, omit_classes=[3], train_fraction=8 / 810)


@pytest.mark.parametrize(
    ("n", "bs", "sizes"),
    [
        (40, 64, [40]),  # a batch larger than the split: one batch of all of it
        (65, 64, [65]),  # a trailing batch of one joins the previous one (BatchNorm)
        (129, 64, [64, 65]),
        (130, 64, [64, 64, 2]),
        (1, 64, [1]),
    ],
)
def test_batches_cover_the_split_without_a_batch_of_one(n, bs, sizes):
    parts = list(batch_indices(torch.arange(n), bs, torch.Generator().manual_seed(0)))
    assert [len(p) for p in parts] == sizes
    assert sorted(torch.cat(parts).tolist()) == list(range(n))


# --------------------------------------------------------------------------- the CLI


def _write_idx(path: Path, a: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, a.ndim) + struct.pack(">" + "I" * a.ndim, *a.shape)
    path.write_bytes(header + a.astype(np.uint8).tobytes())


def mnist_root(root: Path, n_train: int = 4000, n_test: int = 500) -> Path:
    """An MNIST root of n_train synthetic 28x28 images: each class a bright bar in its own row
    band plus noise (learnable in an epoch), written as the four IDX files."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("t10k", n_test)):
        y = rng.integers(0, 10, n)
        x = rng.integers(0, 60, (n, 28, 28))
        for c in range(10):
            x[y == c, 2 * c + 4 : 2 * c + 7, 4:24] = 250
        _write_idx(root / f"{split}-images-idx3-ubyte", x)
        _write_idx(root / f"{split}-labels-idx1-ubyte", y)
    return root


@pytest.mark.slow
def test_omit_class_recipe_runs_on_a_4000_image_mnist_root(run_kdrun, tmp_path):
    root = mnist_root(tmp_path / "mnist")
    run = tmp_path / "run"
    # The dataset's own defaults; only the epochs are cut to keep the test CI-sized.
    r = run_kdrun(
        "experiment=omit_class",
        "dataset=mnist",
        f"dataset.root={root}",
        "teacher.train.epochs=1",
        "student.train.epochs=2",
        "runtime.num_threads=1",
        run_dir=run,
    )
    assert r.returncode == 0, r.stderr
    m = read_json(run / "metrics.json")
    assert m["status"] == "completed"
    assert (m["data"]["train_size"] + m["data"]["val_size"], m["data"]["val_size"]) == (4000, 400)
    assert m["omitted"]["classes"] == [3]
    r = run_kdrun("dataset=mnist", f"dataset.root={root}", "dataset.val_size=5000")
    assert r.returncode != 0
    (line,) = r.stderr.strip().splitlines()
    assert "dataset.val_size=5000 leaves no training data" in line
    assert line.endswith("try dataset.val_size=0.1")
