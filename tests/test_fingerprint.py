"""Content fingerprints of data files (kdrun.store.fingerprint) and the files loaders report."""

from __future__ import annotations

import os
import pickle
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from kdrun.config import DatasetConfig
from kdrun.data import load_data
from kdrun.data.builtin import load_cifar10, load_digits, load_mnist
from kdrun.data.external import LoadHints, load_external
from kdrun.store import fingerprint as fpm
from kdrun.store.fingerprint import DigestCache, data_fingerprint, fingerprint_files
from tests.byo_util import write_image_folder, write_npz


@pytest.fixture(autouse=True)
def digest_cache(tmp_path, monkeypatch):
    """Every test has its own cache file; files count as settled at once (no racy window),
    unless a test says otherwise."""
    path = tmp_path / "digests.json"
    monkeypatch.setenv("KDRUN_DIGEST_CACHE", str(path))
    monkeypatch.setattr(fpm, "RACY_NS", 0)
    return path


@pytest.fixture
def reads(monkeypatch):
    """How many times a file's content was read to hash it."""
    count = {"n": 0}
    real = fpm._read_hash

    def counting(path):
        count["n"] += 1
        return real(path)

    monkeypatch.setattr(fpm, "_read_hash", counting)
    return count


def _write_idx(path: Path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    path.write_bytes(header + arr.astype(np.uint8).tobytes())


def _mnist_dir(d: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True)
    for stem, n in (("train", 60), ("t10k", 20)):
        _write_idx(d / f"{stem}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(d / f"{stem}-labels-idx1-ubyte", np.arange(n) % 10)
    return d


def ds(**kw):
    return OmegaConf.structured(DatasetConfig(**kw))


# --------------------------------------------------------------------------- the cache


def test_same_content_under_another_path_has_the_same_fingerprint(tmp_path):
    a = tmp_path / "a" / "x.bin"
    a.parent.mkdir()
    a.write_bytes(b"0123456789" * 100)
    b = tmp_path / "elsewhere" / "deeper" / "x.bin"
    b.parent.mkdir(parents=True)
    shutil.copy(a, b)
    assert fingerprint_files({"x.bin": a}) == fingerprint_files({"x.bin": b})
    assert fingerprint_files({"x.bin": a}) != fingerprint_files({"y.bin": a})  # names count
    # a directory: the sorted (relative path, hash) list, wherever it lies
    shutil.copytree(a.parent, tmp_path / "copy")
    cache = DigestCache()
    assert cache.tree(a.parent) == cache.tree(tmp_path / "copy")
    (tmp_path / "copy" / "x.bin").rename(tmp_path / "copy" / "z.bin")
    assert cache.tree(a.parent) != cache.tree(tmp_path / "copy")


def test_one_byte_changed_with_mtime_set_back_changes_the_fingerprint(tmp_path, reads):
    f = tmp_path / "data.bin"
    f.write_bytes(bytes(range(256)) * 64)
    before = os.stat(f)
    first = fingerprint_files({"d": f})
    assert reads["n"] == 1
    time.sleep(0.05)  # past the kernel's timestamp tick: the change gets a new ctime
    with open(f, "r+b") as h:  # same size, one byte different
        h.seek(1000)
        h.write(b"\xff")
    os.utime(f, ns=(before.st_atime_ns, before.st_mtime_ns))  # mtime set back
    after = os.stat(f)
    assert after.st_size == before.st_size and after.st_mtime_ns == before.st_mtime_ns
    assert fingerprint_files({"d": f}) != first
    assert reads["n"] == 2  # the cache key missed (ctime), so the content was hashed again


def test_a_cache_hit_does_not_read_the_file_again(tmp_path, reads, digest_cache):
    f = tmp_path / "data.bin"
    f.write_bytes(b"abc" * 1000)
    first = fingerprint_files({"d": f})
    assert reads["n"] == 1 and digest_cache.is_file()
    # another process: a fresh cache object loads the file written by the first
    assert fingerprint_files({"d": f}) == first
    assert reads["n"] == 1


def test_a_recently_changed_file_is_hashed_but_not_cached(tmp_path, reads, monkeypatch):
    monkeypatch.setattr(fpm, "RACY_NS", 10**12)  # everything counts as just written
    f = tmp_path / "data.bin"
    f.write_bytes(b"abc")
    fingerprint_files({"d": f})
    fingerprint_files({"d": f})
    assert reads["n"] == 2


def test_a_corrupt_cache_is_ignored_and_rewritten(tmp_path, reads, digest_cache):
    f = tmp_path / "data.bin"
    f.write_bytes(b"abc")
    first = fingerprint_files({"d": f})
    for junk in ("{not json", '{"version": 1, "entries": [1, 2]}', "[]", ""):
        digest_cache.write_text(junk)
        assert fingerprint_files({"d": f}) == first
    assert reads["n"] == 5  # every corrupt cache missed; the last one was rewritten
    assert fingerprint_files({"d": f}) == first and reads["n"] == 5


def test_the_cache_is_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(fpm, "MAX_ENTRIES", 3)
    for i in range(5):
        (tmp_path / f"{i}").write_bytes(bytes([i]))
    fingerprint_files({str(i): tmp_path / f"{i}" for i in range(5)})
    assert len(DigestCache().entries) == 3


# --------------------------------------------------------------------------- the loaders


def test_idx_loaders_report_their_files_and_content_decides(tmp_path):
    a = _mnist_dir(tmp_path / "A")
    raw = load_mnist(ds(name="mnist", root=str(a)))
    assert sorted(raw.sources) == sorted(p.name for p in a.iterdir())
    b = tmp_path / "B"
    shutil.copytree(a, b)
    fa = data_fingerprint(load_data(ds(name="mnist", root=str(a))))
    assert fa == data_fingerprint(load_data(ds(name="mnist", root=str(b))))
    assert fa.startswith("files:")
    c = _mnist_dir(tmp_path / "C", seed=1)  # same names and sizes, other images
    assert fa != data_fingerprint(load_data(ds(name="mnist", root=str(c))))


def test_digits_report_sklearns_file():
    raw = load_digits(ds(name="digits"))
    (name, path), *rest = raw.sources.items()
    assert not rest and Path(path).is_file() and name.endswith("digits.csv.gz")
    assert data_fingerprint(raw) == data_fingerprint(load_data(ds(name="digits")))


def test_cifar_reports_the_batches_torchvision_reads(tmp_path, monkeypatch):
    tv = pytest.importorskip("torchvision.datasets")
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, _ in tv.CIFAR10.train_list + tv.CIFAR10.test_list:
        batch = {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), "labels": [0, 1, 2, 3]}
        (folder / name).write_bytes(pickle.dumps(batch))
    names = {"label_names": [f"c{i}" for i in range(10)]}
    (folder / "batches.meta").write_bytes(pickle.dumps(names))
    (folder / "readme.html").write_text("not read")
    cifar = pytest.importorskip("torchvision.datasets.cifar")
    monkeypatch.setattr(cifar, "check_integrity", lambda *a, **k: True)  # fake files' md5s
    raw = load_cifar10(ds(name="cifar10", root=str(tmp_path)))
    assert len(raw.sources) == 7 and all(Path(p).is_file() for p in raw.sources.values())
    assert "cifar-10-batches-py/readme.html" not in raw.sources


def test_external_loaders_report_their_files(tmp_path):
    root = write_image_folder(tmp_path / "imgs", per_class=2, test_per_class=1, classes=2)
    raw = load_external("image_folder", OmegaConf.create({"root": str(root)}), LoadHints())
    assert len(raw.sources) == 6 and all(k.startswith(("train/", "test/")) for k in raw.sources)
    npz = write_npz(tmp_path / "t.npz")
    raw = load_external("tensors", OmegaConf.create({"path": str(npz)}), LoadHints())
    assert raw.sources == {"arrays.npz": str(npz)}
    # the same folder elsewhere: the same fingerprint
    shutil.copytree(root, tmp_path / "moved")
    again = load_external(
        "image_folder", OmegaConf.create({"root": str(tmp_path / "moved")}), LoadHints()
    )
    first = load_external("image_folder", OmegaConf.create({"root": str(root)}), LoadHints())
    assert data_fingerprint(first) == data_fingerprint(again)


def test_hf_reports_every_file_of_the_saved_set(tmp_path):
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(2)})
    ims = [Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)) for i in range(4)]
    split = datasets.Dataset.from_dict({"image": ims, "label": [0, 1, 0, 1]}, feats)
    datasets.DatasetDict(train=split, test=split).save_to_disk(tmp_path / "ds")
    raw = load_external("hf", OmegaConf.create({"path": str(tmp_path / "ds")}), LoadHints())
    assert "dataset_dict.json" in raw.sources
    assert data_fingerprint(raw).startswith("files:")


def test_a_loader_naming_no_files_is_fingerprinted_by_its_arrays():
    from kdrun.data.registry import RawData

    x, y = np.zeros((4, 1, 2, 2), np.float32), np.arange(4)
    a = data_fingerprint(RawData(x, y, x, y))
    assert a.startswith("arrays:") and a == data_fingerprint(RawData(x.copy(), y, x, y))
    assert a != data_fingerprint(RawData(x, y[::-1].copy(), x, y))
