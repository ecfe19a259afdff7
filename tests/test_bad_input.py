"""Every bad input: one line on stderr naming the problem and the fix, a non-zero exit, no
traceback, and nothing already written changed (a completed run and its store are hashed before
and after each case)."""

from __future__ import annotations

import os
import pickle
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from tests.byo_util import write_image_folder
from tests.conftest import read_json
from tests.reliability_util import RECIPE, digest, reference_run

pytestmark = pytest.mark.slow

# Injected into the child through PYTHONPATH: fsync of a file whose name contains
# $KDRUN_TEST_ENOSPC fails as on a full disk. Test-only; the product has no hook for it.
ENOSPC_SITECUSTOMIZE = """
import errno, os
_pattern = os.environ.get("KDRUN_TEST_ENOSPC")
if _pattern:
    _fsync = os.fsync
    def _full_disk_fsync(fd):
        try:
            name = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            name = ""
        if _pattern in name:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return _fsync(fd)
    os.fsync = _full_disk_fsync
"""


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['KDRUN_TEST_SENTINEL']}",))


def _idx(path: Path, arr_dims: tuple[int, ...], truncate: int = 0) -> None:
    """A small IDX file (the MNIST format): magic, dims, unsigned bytes."""
    n = 1
    for d in arr_dims:
        n *= d
    head = bytes([0, 0, 8, len(arr_dims)]) + struct.pack(">" + "I" * len(arr_dims), *arr_dims)
    data = head + bytes(i % 10 for i in range(n))
    path.write_bytes(data[: len(data) - truncate])


def fake_mnist(root: Path, damage: str) -> None:
    root.mkdir(parents=True, exist_ok=True)
    _idx(root / "train-images-idx3-ubyte", (30, 28, 28), truncate=100 if damage == "cut" else 0)
    _idx(root / "train-labels-idx1-ubyte", (30,))
    _idx(root / "t10k-images-idx3-ubyte", (10, 28, 28))
    _idx(root / "t10k-labels-idx1-ubyte", (10,))
    if damage == "garbled":  # the labels only as a .gz that is not gzip data
        (root / "t10k-labels-idx1-ubyte").unlink()
        (root / "t10k-labels-idx1-ubyte.gz").write_bytes(b"this is not gzip data")


@dataclass
class Case:
    args: list[str]
    words: list[str]  # each must appear (case-insensitively) in the one stderr line
    code: int = 2
    setup: Callable[[Path], None] | None = None
    after: Callable[[Path], None] | None = None  # more checks, given the case's tmp dir
    env: dict[str, str] = field(default_factory=dict)
    in_reference: bool = False  # run in the completed reference run's own directory


def _kept_last_good_checkpoint(tmp: Path) -> None:
    ck = torch.load(tmp / "run" / "checkpoints" / "student.partial.pt", weights_only=True)
    assert ck["epoch"] == 1 and ck["mid"] is None
    assert all(torch.isfinite(v).all() for v in ck["distiller"].values())
    assert read_json(tmp / "run" / "metrics.json")["status"] == "failed"


def _disk_full_left_no_debris(tmp: Path) -> None:
    assert not list((tmp / "run").rglob("*.tmp")) and not list((tmp / "run").rglob(".*.tmp"))
    assert read_json(tmp / "run" / "metrics.json")["status"] == "failed"


def _nothing_executed(tmp: Path) -> None:
    assert not (tmp / "executed").exists()


def _make_evil(tmp: Path) -> None:
    os.environ["KDRUN_TEST_SENTINEL"] = str(tmp / "executed")  # read at pickling time
    (tmp / "evil.pt").write_bytes(pickle.dumps({"fc.weight": _Evil()}))


def _make_file(tmp: Path) -> None:
    (tmp / "afile").write_text("a file, not a directory")


def _make_sitecustomize(tmp: Path) -> None:
    (tmp / "hook").mkdir()
    (tmp / "hook" / "sitecustomize.py").write_text(ENOSPC_SITECUSTOMIZE)


def _make_bad_image_folder(tmp: Path) -> None:
    write_image_folder(tmp / "imgs", per_class=2, test_per_class=1, classes=2)
    (tmp / "imgs" / "train" / "digit_0" / "junk.png").write_bytes(b"not an image")


def _make_partial_npz(tmp: Path) -> None:
    np.savez(tmp / "part.npz", x_train=np.zeros((4, 3)), y_train=np.zeros(4, np.int64))


def _make_three_class_resnet(tmp: Path) -> None:
    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), tmp / "r3.pt")


REPO = Path(__file__).resolve().parents[1]
CASES: dict[str, Case] = {
    # ---- composition: caught before Hydra starts (cli.precheck)
    "unknown dataset": Case(["dataset=imagenet"], ["unknown dataset 'imagenet'", "digits"]),
    "unknown model": Case(["student=vit"], ["unknown student 'vit'", "mlp"]),
    "unknown method": Case(["method=fitnet9"], ["unknown method 'fitnet9'", "kd"]),
    "unknown parallel_baseline": Case(
        ["runtime.parallel_baseline=yes"], ["unknown runtime.parallel_baseline 'yes'", "auto, on"]
    ),
    "unknown fused_optimizer": Case(
        ["runtime.fused_optimizer=maybe"], ["runtime.fused_optimizer 'maybe'", "auto, true"]
    ),
    "unknown key": Case(["student.train.lr_=0.1"], ["unknown config key", "'student.train.lr'"]),
    "unknown key added with +": Case(["+teacher.depthh=3"], ["unknown config key", "depthh"]),
    "wrong type": Case(["T=hot"], ["T=hot", "float"]),
    "wrong type in a list": Case(["dataset.omit_classes=3x"], ["not a list", "=[3,5]"]),
    # ---- values: caught by config.validate inside the job
    "T <= 0": Case(["T=0"], ["T must be > 0", "T=4"]),
    "alpha > 1": Case(["alpha=1.5"], ["alpha must be in [0, 1]", "alpha=0.9"]),
    "epochs < 1": Case(["student.train.epochs=0"], ["student.train.epochs must be >= 1"]),
    "batch size < 1": Case(["teacher.train.batch_size=0"], ["teacher.train.batch_size", ">= 1"]),
    "train_fraction > 1": Case(["dataset.train_fraction=1.5"], ["train_fraction", "(0, 1]"]),
    "omitted class out of range": Case(
        ["dataset.omit_classes=[3,10]"], ["class(es) [10] out of range", "0..9"]
    ),
    "every class omitted": Case(
        ["dataset.omit_classes=[0,1,2,3,4,5,6,7,8,9]"], ["omits every class", "omit fewer"]
    ),
    "device not available": Case(["device=cuda"], ["CUDA is not available", "device=cpu"]),
    # ---- files
    "data files missing": Case(
        ["dataset=mnist", "dataset.root={tmp}/nothing"],
        ["MNIST files not found", "dataset.root", "dataset.download=true"],
        env={"KDRUN_DATA": "{tmp}/nothing", "KDRUN_SYSTEM_DATASETS": "{tmp}/nothing"},
    ),
    "data file truncated": Case(
        ["dataset=mnist", "dataset.root={tmp}/mnist"],
        ["truncated", "fetch the file again"],
        setup=lambda t: fake_mnist(t / "mnist", "cut"),
        env={"KDRUN_DATA": "{tmp}/nothing", "KDRUN_SYSTEM_DATASETS": "{tmp}/nothing"},
    ),
    "data file unreadable": Case(
        ["dataset=mnist", "dataset.root={tmp}/mnist"],
        ["cannot read", "delete it and fetch it again"],
        setup=lambda t: fake_mnist(t / "mnist", "garbled"),
        env={"KDRUN_DATA": "{tmp}/nothing", "KDRUN_SYSTEM_DATASETS": "{tmp}/nothing"},
    ),
    "teacher checkpoint missing": Case(
        ["teacher.checkpoint={tmp}/nope.pt"], ["does not exist", "teacher.pt"]
    ),
    "teacher checkpoint does not fit": Case(
        ["teacher.checkpoint={ref_run}/checkpoints/student.pt"],
        ["does not fit teacher=cnn", "check the teacher model"],
    ),
    "teacher checkpoint runs code": Case(
        ["teacher.checkpoint={tmp}/evil.pt"],
        ["not plain weights", "never runs code"],
        setup=_make_evil,
        after=_nothing_executed,
    ),
    # ---- the user's own data and models
    "image folder missing": Case(
        ["dataset=image_folder", "dataset.root={tmp}/nope"], ["{tmp}/nope/train", "dataset.root"]
    ),
    "bad image with on_bad_image=error": Case(
        ["dataset=image_folder", "dataset.root={tmp}/imgs", "dataset.on_bad_image=error"],
        ["junk.png", "on_bad_image=skip"],
        setup=_make_bad_image_folder,
    ),
    "npz without its arrays": Case(
        ["dataset=tensors", "dataset.path={tmp}/part.npz"],
        ["part.npz lacks", "x_test"],
        setup=_make_partial_npz,
    ),
    "teacher weights run code": Case(
        ["teacher=torchvision", "teacher.weights={tmp}/evil.pt"],
        ["never runs code", ".safetensors"],
        setup=_make_evil,
        after=_nothing_executed,
    ),
    "teacher weights for other classes": Case(
        ["teacher=torchvision", "teacher.weights={tmp}/r3.pt"],
        ["3 classes", "has 10", "teacher.num_classes_from_data=true"],
        setup=_make_three_class_resnet,
    ),
    "custom model not importable": Case(
        ["teacher=custom", "teacher._target_=nopkg.Net"], ["cannot be imported", "PYTHONPATH"]
    ),
    "output dir not writable": Case(
        ["hydra.run.dir={tmp}/afile/run"],
        ["cannot create directory", "hydra.run.dir"],
        setup=_make_file,
    ),
    "disk full": Case(
        [],
        ["no space left on device", "student.partial.pt", "intact", "rerun"],
        setup=_make_sitecustomize,
        after=_disk_full_left_no_debris,
        env={
            "KDRUN_TEST_ENOSPC": "student.partial.pt",
            "PYTHONPATH": f"{{tmp}}/hook{os.pathsep}{REPO}",
        },
    ),
    "loss becomes NaN": Case(
        # epoch 1 is sound; then the step schedule multiplies the lr by 1e30
        [
            "baseline=false",
            "student.train.schedule=step",
            "student.train.milestones=[1]",
            "student.train.gamma=1e30",
        ],
        [
            "student: loss became nan in epoch 2",
            "lower student.train.lr",
            "last good checkpoint is kept",
        ],
        code=3,
        after=_kept_last_good_checkpoint,
    ),
    "a language model on images": Case(
        ["teacher=gpt"], ["teacher=gpt reads tokens", "dataset=digits gives images", "teacher=cnn"]
    ),
    "an image model on text": Case(
        ["dataset=pystdlib", "teacher=gpt"],
        ["student=mlp reads images", "gives tokens", "student=gpt"],
    ),
    "other config in a completed run dir": Case(
        ["T=2"], ["already holds a completed run", "new hydra.run.dir"], in_reference=True
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, run_kdrun, tmp_path):
    case = CASES[name]
    if name == "device not available" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    ref_run, ref_store = reference_run(*RECIPE)
    before = digest(ref_run, ref_store)
    if case.setup is not None:
        case.setup(tmp_path)
    fill = {"tmp": str(tmp_path), "ref_run": str(ref_run)}
    args = [*RECIPE, *(a.format(**fill) for a in case.args)]
    if not any(a.startswith("store_dir=") for a in args):
        args.append(f"store_dir={ref_store}")  # its teacher may be reused, never damaged
    env = {k: v.format(**fill) for k, v in case.env.items()}
    run_dir = ref_run if case.in_reference else tmp_path / "run"
    if any(a.startswith("hydra.run.dir=") for a in args):
        run_dir = None
    r = run_kdrun(*args, run_dir=run_dir, env=env)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == case.code, (r.returncode, r.stderr, r.stdout[-2000:])
    assert "Traceback" not in r.stderr + r.stdout
    assert len(lines) == 1 and lines[0].startswith("kdrun: error: "), r.stderr
    for w in case.words:
        assert w.format(**fill).lower() in lines[0].lower(), (w, lines[0])
    if case.after is not None:
        case.after(tmp_path)
    assert digest(ref_run, ref_store) == before  # nothing already written was changed
