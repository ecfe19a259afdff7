"""Through the CLI: a store shared by two runs never hands back a model or cache made from
other data or other code (issue 23's cases (a)-(d)); the same run again reuses everything."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits

from tests.byo_util import write_digits_npz, write_user_module
from tests.conftest import REPO, read_json

pytestmark = pytest.mark.slow

QUICK = (
    "experiment=smoke",
    "teacher.train.epochs=1",
    "student.train.epochs=1",
    "student=mlp",
    "student.hidden=[16]",
    "runtime.num_threads=1",
)
BUILT = ("teacher", "baseline", "teacher_test_logits")


def ok(p) -> dict:
    assert p.returncode == 0, p.stderr[-3000:]
    return p


def from_store(run: Path) -> dict[str, bool]:
    return read_json(run / "metrics.json")["from_store"]


def rebuilt(run: Path) -> None:
    fs = from_store(run)
    assert not any(fs.get(k) for k in BUILT), fs


def _idx(path: Path, a: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 8, a.ndim) + struct.pack(">" + "I" * a.ndim, *a.shape)
    path.write_bytes(header + a.astype(np.uint8).tobytes())


def write_idx_root(root: Path, offset: int = 0, n: int = 600) -> Path:
    """The bundled digits as MNIST IDX files (8x8), ``n`` train rows from ``offset``."""
    d = load_digits()
    x = (d.images * 16).clip(0, 255).astype(np.uint8)
    y = d.target.astype(np.uint8)
    root.mkdir(parents=True, exist_ok=True)
    tr = slice(offset, offset + n)
    _idx(root / "train-images-idx3-ubyte", x[tr])
    _idx(root / "train-labels-idx1-ubyte", y[tr])
    _idx(root / "t10k-images-idx3-ubyte", x[1400:1700])
    _idx(root / "t10k-labels-idx1-ubyte", y[1400:1700])
    return root


def test_a_other_root_rebuilds_and_the_same_reuses(run_kdrun, tmp_path):
    a, b = write_idx_root(tmp_path / "A", 0, 400), write_idx_root(tmp_path / "B", 0, 800)
    args = ("dataset=mnist", *QUICK)
    ok(run_kdrun(*args, f"dataset.root={a}", run_dir=tmp_path / "r1"))
    ok(run_kdrun(*args, f"dataset.root={b}", run_dir=tmp_path / "r2"))
    rebuilt(tmp_path / "r2")
    m1, m2 = read_json(tmp_path / "r1/metrics.json"), read_json(tmp_path / "r2/metrics.json")
    assert m1["data_fingerprint"] != m2["data_fingerprint"]
    # the same bytes under another root: the same fingerprint, everything reused
    c = tmp_path / "C"
    c.mkdir()
    for f in b.iterdir():
        (c / f.name).write_bytes(f.read_bytes())
    ok(run_kdrun(*args, f"dataset.root={c}", run_dir=tmp_path / "r3"))
    fs = from_store(tmp_path / "r3")
    assert all(fs[k] for k in BUILT), fs
    assert read_json(tmp_path / "r3/metrics.json")["data_fingerprint"] == m2["data_fingerprint"]


def test_b_same_root_with_files_replaced_rebuilds(run_kdrun, tmp_path):
    root = write_idx_root(tmp_path / "A", 0, 400)
    args = ("dataset=mnist", f"dataset.root={root}", *QUICK)
    ok(run_kdrun(*args, run_dir=tmp_path / "r1"))
    write_idx_root(root, 500, 400)  # other images, the same sizes and names
    ok(run_kdrun(*args, run_dir=tmp_path / "r2"))
    rebuilt(tmp_path / "r2")


def test_c_hf_label_column_changed_rebuilds(run_kdrun, tmp_path):
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    d = load_digits()
    x = (d.images * 16).clip(0, 255).astype(np.uint8)
    feats = datasets.Features(
        {
            "image": datasets.Image(),
            "label": datasets.Value("int64"),
            "shifted": datasets.Value("int64"),
        }
    )

    def split(rows: range):
        return datasets.Dataset.from_dict(
            {
                "image": [Image.fromarray(x[i]) for i in rows],
                "label": [int(d.target[i]) for i in rows],
                "shifted": [int(d.target[i] + 3) % 10 for i in rows],
            },
            feats,
        )

    datasets.DatasetDict(train=split(range(400)), test=split(range(1400, 1600))).save_to_disk(
        tmp_path / "ds"
    )
    args = ("dataset=hf", f"dataset.path={tmp_path / 'ds'}", *QUICK)
    ok(run_kdrun(*args, run_dir=tmp_path / "r1"))
    ok(run_kdrun(*args, "dataset.label_column=shifted", run_dir=tmp_path / "r2"))
    rebuilt(tmp_path / "r2")
    assert not from_store(tmp_path / "r2").get("teacher_logits")


def test_d_custom_teacher_module_edited_rebuilds(run_kdrun, tmp_path):
    user = write_user_module(tmp_path / "user")
    npz = write_digits_npz(tmp_path / "digits.npz")
    env = {"PYTHONPATH": f"{user}{os.pathsep}{REPO}"}
    args = (
        "teacher=custom",
        "teacher._target_=usernets.TinyNet",
        "teacher.width=4",
        "dataset=tensors",
        f"dataset.path={npz}",
        *QUICK,
    )
    ok(run_kdrun(*args, run_dir=tmp_path / "r1", env=env))
    ok(run_kdrun(*args, run_dir=tmp_path / "r2", env=env))
    assert from_store(tmp_path / "r2")["teacher"]  # unchanged code: reused
    src = user / "usernets.py"
    src.write_text(src.read_text().replace('"relu": nn.ReLU', '"relu": nn.Sigmoid'))
    ok(run_kdrun(*args, run_dir=tmp_path / "r3", env=env))
    fs = from_store(tmp_path / "r3")
    assert not fs["teacher"] and not fs["teacher_test_logits"], fs
    assert fs["baseline"]  # the student's data and recipe did not change
    codes = [read_json(tmp_path / f"{r}/metrics.json")["teacher_code"] for r in ("r1", "r3")]
    assert codes[0]["source"] != codes[1]["source"]
