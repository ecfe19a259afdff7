"""Data sets: the embedded digits, real Fashion-MNIST IDX files, and the opt-in download path
(served from a loopback HTTP server, never the internet)."""

from __future__ import annotations

import functools
import gzip
import http.server
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from kdrun.config import DatasetConfig
from kdrun.data import augment_batch, batch_indices, load_data, read_idx
from kdrun.errors import DataError
from tests.conftest import FASHION_DIR, needs_fashion


def ds(**kw) -> OmegaConf:
    return OmegaConf.structured(DatasetConfig(**kw))


def test_digits_split_and_normalisation():
    d = load_data(ds(name="digits", val_size=0.1))
    n_train, n_val, n_test = len(d.y_train), len(d.y_val), len(d.y_test)
    assert n_train + n_val + n_test == 1797
    assert n_test == 359 and abs(n_val - 0.1 * (n_train + n_val)) <= 1
    assert d.x_train.shape[1:] == (1, 8, 8) and d.x_train.dtype == torch.float32
    # statistics come from the training split only: it is standardised, val/test only roughly
    assert abs(float(d.x_train.mean())) < 1e-4
    assert abs(float(d.x_train.std()) - 1) < 1e-2
    assert float(d.x_test.mean()) != pytest.approx(0.0, abs=1e-4)
    # no image is in two splits
    tr = {row.numpy().tobytes() for row in d.x_train.flatten(1)}
    assert not any(row.numpy().tobytes() in tr for row in d.x_test.flatten(1)[:50])


def test_split_is_fixed_by_split_seed_not_run_seed():
    a, b = load_data(ds(name="digits")), load_data(ds(name="digits"))
    assert torch.equal(a.y_val, b.y_val)
    c = load_data(ds(name="digits", split_seed=1))
    assert not torch.equal(a.y_val, c.y_val)


def test_student_transfer_set_restrictions():
    d = load_data(ds(name="digits", omit_classes=[3]))
    assert not (d.y_train[d.student_idx] == 3).any()
    assert not (d.y_val[d.student_val_idx] == 3).any()
    assert (d.y_train == 3).any()  # the teacher still sees every class
    f = load_data(ds(name="digits", train_fraction=0.1))
    assert len(f.student_idx) == round(0.1 * len(f.y_train))
    k = load_data(ds(name="digits", keep_classes=[7, 8]))
    assert set(k.y_train[k.student_idx].tolist()) == {7, 8}
    with pytest.raises(DataError, match="out of range"):
        load_data(ds(name="digits", omit_classes=[10]))
    with pytest.raises(DataError, match="every class is omitted"):
        load_data(ds(name="digits", omit_classes=list(range(10))))


def test_batches_cover_every_index_once():
    idx = torch.arange(100) * 3
    seen = torch.cat(list(batch_indices(idx, 32, torch.Generator().manual_seed(0))))
    assert sorted(seen.tolist()) == idx.tolist()
    assert seen.tolist() != idx.tolist()  # shuffled


def test_augment_batch_crops_and_flips_per_sample():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).reshape(2, 1, 4, 4)
    same = augment_batch(x, padding=0, hflip=False, generator=None)
    assert torch.equal(same, x)
    g = torch.Generator().manual_seed(0)
    out = augment_batch(x.repeat(64, 1, 1, 1), padding=2, hflip=True, generator=g)
    assert out.shape == (128, 1, 4, 4)
    # every output is a (possibly flipped) 4x4 window of the zero-padded input
    padded = torch.nn.functional.pad(x.repeat(64, 1, 1, 1), (2, 2, 2, 2))
    for i in range(0, 128, 17):
        windows = [padded[i, 0, r : r + 4, c : c + 4] for r in range(5) for c in range(5)]
        assert any(torch.equal(out[i, 0], w) or torch.equal(out[i, 0], w.flip(1)) for w in windows)
    assert len({tuple(o.flatten().tolist()) for o in out}) > 4  # offsets differ per sample


@needs_fashion
def test_fashion_mnist_from_the_system_files():
    d = load_data(ds(name="fashion_mnist", val_size=5000))
    assert len(d.y_train) == 55000 and len(d.y_val) == 5000 and len(d.y_test) == 10000
    assert d.x_train.shape[1:] == (1, 28, 28)
    assert torch.bincount(d.y_test).tolist() == [1000] * 10
    assert d.class_names[9] == "Ankle boot"


def test_missing_files_say_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setenv("KDRUN_SYSTEM_DATASETS", str(tmp_path / "none"))
    monkeypatch.setenv("KDRUN_DATA", str(tmp_path / "cache"))
    with pytest.raises(DataError) as e:
        load_data(ds(name="fashion_mnist", root=str(tmp_path)))
    msg = str(e.value)
    assert "dataset-fashion-mnist" in msg and "dataset.download=true" in msg and "\n" not in msg


def _write_idx(path: Path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    path.write_bytes(header + arr.astype(np.uint8).tobytes())


def test_idx_reader_and_truncation(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "a", arr)
    assert np.array_equal(read_idx(tmp_path / "a"), arr)
    with gzip.open(tmp_path / "a.gz", "wb") as f:
        f.write((tmp_path / "a").read_bytes())
    assert np.array_equal(read_idx(tmp_path / "a.gz"), arr)
    (tmp_path / "b").write_bytes((tmp_path / "a").read_bytes()[:-5])
    with pytest.raises(DataError, match="truncated"):
        read_idx(tmp_path / "b")
    (tmp_path / "c").write_bytes(b"not an idx file")
    with pytest.raises(DataError, match="not an unsigned-byte IDX"):
        read_idx(tmp_path / "c")


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def loopback_mirror(tmp_path):
    """An HTTP server on 127.0.0.1 serving the real Fashion-MNIST .gz files."""
    served = tmp_path / "served"
    served.mkdir()
    for f in FASHION_DIR.glob("*.gz"):
        shutil.copy(f, served / f.name)
    handler = functools.partial(_QuietHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@needs_fashion
def test_download_through_torchvision_from_loopback(tmp_path, monkeypatch, loopback_mirror):
    import hashlib

    import torchvision

    # Debian recompressed the .gz files, so their MD5s differ from torchvision's table of the
    # upstream archives; point the table at the served files (same images, same labels).
    served = tmp_path / "served"
    monkeypatch.setattr(
        torchvision.datasets.FashionMNIST,
        "resources",
        [(f.name, hashlib.md5(f.read_bytes()).hexdigest()) for f in sorted(served.glob("*.gz"))],
    )
    monkeypatch.setenv("KDRUN_SYSTEM_DATASETS", str(tmp_path / "none"))
    monkeypatch.setenv("KDRUN_DATA", str(tmp_path / "cache"))
    root = tmp_path / "data"
    with pytest.raises(DataError, match="dataset.download=true"):
        load_data(ds(name="fashion_mnist", root=str(root)))
    d = load_data(
        ds(
            name="fashion_mnist",
            root=str(root),
            download=True,
            mirror=loopback_mirror,
            val_size=5000,
        )
    )
    assert (root / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").is_file()
    assert len(d.y_train) + len(d.y_val) == 60000 and len(d.y_test) == 10000
    # the second time the files are found locally: no server needed
    d2 = load_data(ds(name="fashion_mnist", root=str(root)))
    assert torch.equal(d2.y_test, d.y_test)


def test_download_failure_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("KDRUN_SYSTEM_DATASETS", str(tmp_path / "none"))
    monkeypatch.setenv("KDRUN_DATA", str(tmp_path / "cache"))
    # a loopback port with nothing listening: fails at once, never leaves the machine
    with pytest.raises(DataError, match="downloading Fashion-MNIST") as e:
        load_data(
            ds(
                name="fashion_mnist",
                root=str(tmp_path),
                download=True,
                mirror="http://127.0.0.1:9/",
            )
        )
    assert "\n" not in str(e.value)
