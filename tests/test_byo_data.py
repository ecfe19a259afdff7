"""The user's own data: image folders (in memory and streamed), .npz arrays, datasets folders.
Every test writes its own data; bad input is one line."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from kdrun.data.external import LoadHints, load_external, parse_size, split_rows
from kdrun.errors import ConfigError, DataError
from tests.byo_util import write_image_folder, write_npz


def folder_cfg(root, **kw):
    base = {
        "root": str(root),
        "image_size": None,
        "mean": None,
        "std": None,
        "on_bad_image": "skip",
        "in_memory": True,
        "num_workers": 1,
    }
    return OmegaConf.create({**base, **kw})


def one_line(e) -> str:
    assert "\n" not in str(e.value) and str(e.value)
    return str(e.value)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("imgs") / "digits")


def test_image_folder_in_memory(folder):
    raw = load_external("image_folder", folder_cfg(folder), LoadHints())
    assert raw.class_names == [f"digit_{c}" for c in range(4)]
    assert raw.x_train.dtype == np.uint8 and raw.x_train.shape == (32, 3, 16, 16)
    assert raw.x_test.shape == (12, 3, 16, 16) and raw.info["channels"] == 3
    assert np.bincount(raw.y_train).tolist() == [8] * 4


def test_gray_detected_and_resized(tmp_path):
    root = write_image_folder(tmp_path / "g", per_class=2, test_per_class=1, rgb=False)
    raw = load_external("image_folder", folder_cfg(root, image_size=10), LoadHints())
    assert raw.x_train.shape == (8, 1, 10, 10)


def test_streaming_gives_identical_rows_and_stats(folder):
    tr, va = np.arange(0, 32, 2), np.arange(1, 32, 2)
    mem = split_rows(load_external("image_folder", folder_cfg(folder), LoadHints()), tr, va)
    cfg = folder_cfg(folder, in_memory=False, num_workers=2)
    disk = split_rows(load_external("image_folder", cfg, LoadHints()), tr, va)
    assert torch.equal(mem["mean"], disk["mean"]) and torch.equal(mem["std"], disk["std"])
    idx = torch.tensor([5, 0, 11, 7])
    for split in ("x_train", "x_val", "x_test"):
        assert torch.equal(mem[split].index_select(0, idx), disk[split].index_select(0, idx))
        assert torch.equal(mem[split][2:6], disk[split][2:6])
    # the memory limit switches to streaming by itself
    small = LoadHints(max_data_memory=1000)
    assert load_external("image_folder", folder_cfg(folder), small).info["in_memory"] is False
    # per-batch normalisation: the training rows have mean 0, std 1 per channel
    x = mem["x_train"].index_select(0, torch.arange(16))
    assert torch.allclose(x.mean((0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(x.std((0, 2, 3), correction=0), torch.ones(3), atol=1e-3)


def test_bad_images_skipped_with_one_warning_or_an_error(folder, tmp_path, caplog):
    root = tmp_path / "bad"
    shutil.copytree(folder, root)
    (root / "train" / "digit_0" / "zz_junk.png").write_bytes(b"not an image")
    good = next((root / "train" / "digit_1").iterdir())
    trunc = root / "train" / "digit_1" / "zz_trunc.png"
    trunc.write_bytes(good.read_bytes()[:60])
    with caplog.at_level(logging.WARNING, logger="kdrun"):
        raw = load_external("image_folder", folder_cfg(root), LoadHints())
    assert len(raw.y_train) == 32 and raw.info["skipped_images"] == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "skipped 2" in warnings[0] and "zz_junk.png" in warnings[0]
    with pytest.raises(DataError) as e:
        load_external("image_folder", folder_cfg(root, on_bad_image="error"), LoadHints())
    assert "zz_junk.png" in one_line(e) and "on_bad_image=skip" in one_line(e)


def test_image_folder_bad_layouts_one_line(tmp_path):
    cases = {}
    cases["no_root"] = folder_cfg(tmp_path / "missing")
    (tmp_path / "empty" / "train").mkdir(parents=True)
    (tmp_path / "empty" / "test").mkdir()
    cases["no_classes"] = folder_cfg(tmp_path / "empty")
    r = write_image_folder(tmp_path / "extra", per_class=1, test_per_class=1, classes=2)
    (r / "test" / "stranger").mkdir()
    Image.new("L", (16, 16)).save(r / "test" / "stranger" / "a.png")
    cases["test_only_class"] = folder_cfg(r)
    r = write_image_folder(tmp_path / "sizes", per_class=1, test_per_class=1, classes=2)
    Image.new("RGB", (20, 20)).save(r / "train" / "digit_0" / "big.png")
    cases["mixed_sizes"] = folder_cfg(r)
    for cfg in cases.values():
        with pytest.raises(DataError) as e:
            load_external("image_folder", cfg, LoadHints())
        one_line(e)
    assert "dataset.image_size" in one_line(e)  # the last one: sizes differ
    with pytest.raises(ConfigError):
        load_external("image_folder", folder_cfg(r, image_size=16, mean=[0.5]), LoadHints())


def test_two_folders_under_one_name_have_different_fingerprints(tmp_path):
    a = write_image_folder(tmp_path / "a", per_class=2, test_per_class=1, classes=2)
    b = write_image_folder(tmp_path / "b", per_class=2, test_per_class=1, classes=2, offset=5)
    fa = load_external("image_folder", folder_cfg(a), LoadHints()).fingerprint
    fb = load_external("image_folder", folder_cfg(b), LoadHints()).fingerprint
    assert fa != fb
    assert load_external("image_folder", folder_cfg(a), LoadHints()).fingerprint == fa


def test_teacher_preprocessing_used_unless_the_user_sets_it(folder):
    hints = LoadHints(image_size=(8, 8), mean=[0.5, 0.5, 0.5], std=[0.2, 0.2, 0.2])
    raw = load_external("image_folder", folder_cfg(folder), hints)
    assert raw.x_train.shape[-2:] == (8, 8) and raw.mean == [0.5] * 3
    raw = load_external(
        "image_folder", folder_cfg(folder, image_size=12, mean=[0.1] * 3, std=[1.0] * 3), hints
    )
    assert raw.x_train.shape[-2:] == (12, 12) and raw.mean == [0.1] * 3


def test_npz_tabular_and_bad_files(tmp_path):
    p = write_npz(tmp_path / "t.npz")
    raw = load_external("tensors", OmegaConf.create({"path": str(p)}), LoadHints())
    assert raw.x_train.shape == (120, 6, 1, 1) and raw.class_names[0] == "class_0"
    rows = split_rows(raw, np.arange(100), np.arange(100, 120))
    assert rows["x_train"].dtype == torch.float32 and rows["mean"].shape == (6,)
    assert (
        raw.fingerprint
        != load_external(
            "tensors",
            OmegaConf.create({"path": str(write_npz(tmp_path / "u.npz", seed=1))}),
            LoadHints(),
        ).fingerprint
    )
    bad = {
        "missing.npz": None,
        "junk.npz": b"junk",
        "nokeys.npz": {"x_train": np.zeros((2, 3))},
        "labels.npz": {
            "x_train": np.zeros((2, 3)),
            "y_train": np.array([0, 9]),
            "x_test": np.zeros((1, 3)),
            "y_test": np.array([0]),
            "class_names": np.array(["a", "b"]),
        },
        "nan.npz": {
            "x_train": np.full((2, 3), np.nan),
            "y_train": np.array([0, 1]),
            "x_test": np.zeros((1, 3)),
            "y_test": np.array([0]),
        },
        "objects.npz": {
            "x_train": np.array([{}, 1], dtype=object),
            "y_train": np.array([0, 1]),
            "x_test": np.zeros((1, 3)),
            "y_test": np.array([0]),
        },
    }
    for name, content in bad.items():
        f = tmp_path / name
        if isinstance(content, bytes):
            f.write_bytes(content)
        elif content is not None:
            np.savez(f, **content)
        with pytest.raises(DataError) as e:
            load_external("tensors", OmegaConf.create({"path": str(f)}), LoadHints())
        assert name in one_line(e), name


def test_hf_dataset_saved_to_disk(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    feats = datasets.Features(
        {"img": datasets.Image(), "lab": datasets.ClassLabel(names=["a", "b"])}
    )

    def split(n):
        ims = [Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)) for i in range(n)]
        return datasets.Dataset.from_dict({"img": ims, "lab": [i % 2 for i in range(n)]}, feats)

    datasets.DatasetDict(train=split(6), test=split(2)).save_to_disk(tmp_path / "ds")
    cfg = OmegaConf.create(
        {"path": str(tmp_path / "ds"), "image_column": "img", "label_column": "lab"}
    )
    raw = load_external("hf", cfg, LoadHints())
    assert raw.x_train.shape == (6, 3, 8, 8) and raw.class_names == ["a", "b"]
    assert raw.x_train[3, 0, 0, 0] == 120
    cfg.label_column = "nope"
    with pytest.raises(DataError) as e:
        load_external("hf", cfg, LoadHints())
    assert "label_column" in one_line(e)
    # the same splits as parquet files (datasets' cache kept inside the test's directory)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    (tmp_path / "pq").mkdir()
    split(6).to_parquet(tmp_path / "pq" / "train-00000.parquet")
    split(2).to_parquet(tmp_path / "pq" / "test-00000.parquet")
    cfg.path, cfg.label_column = str(tmp_path / "pq"), "lab"
    raw = load_external("hf", cfg, LoadHints())
    assert raw.x_train.shape == (6, 3, 8, 8) and len(raw.y_test) == 2


def test_parse_size():
    assert parse_size("8GB") == 8 << 30 and parse_size("512MiB") == 512 << 20
    assert parse_size(1000) == 1000
    with pytest.raises(ConfigError):
        parse_size("lots")
