"""Bring your own teacher, data and model, end to end through the CLI: a pretrained teacher is
evaluated (never retrained) and reports the accuracy it had when trained; a user's module from
outside the package on an .npz; streaming equals in-memory; the store tells two folders under
one name apart; `kdrun export` round-trips."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from kdrun.commands.export import export_run
from kdrun.models import build_model
from tests.byo_util import write_digits_npz, write_image_folder, write_user_module
from tests.conftest import REPO, read_json

pytestmark = pytest.mark.slow

QUICK = (
    "teacher.train.epochs=1",
    "student.train.epochs=1",
    "student=mlp",
    "student.hidden=[32]",
    "runtime.num_threads=1",
    "runtime.progress=off",
)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    base = tmp_path_factory.mktemp("byo")
    a = write_image_folder(base / "a", per_class=10, test_per_class=4, classes=4)
    b = write_image_folder(base / "b", per_class=10, test_per_class=4, classes=4, offset=20)
    return a, b


def ok(p) -> None:
    assert p.returncode == 0, p.stderr[-3000:]


def trained_stages(run: Path) -> set[str]:
    with open(run / "history.csv") as f:
        return {r["stage"] for r in csv.DictReader(f) if r.get("from_store") != "True"}


def same_teacher(trained: dict, pretrained: dict) -> None:
    t0, t1 = trained["teacher"], pretrained["teacher"]
    assert t0["source"] == "trained"
    assert t1["source"] == "pretrained" and t1["train_seconds"] == 0
    assert t1["test_acc"] == t0["test_acc"] and t1["params"] == t0["params"]


def student_from(rec: dict, state: dict) -> torch.nn.Module:
    m = build_model(OmegaConf.create(rec["student"]), rec["input_shape"], rec["num_classes"])
    m.load_state_dict(state)
    return m.eval()


def test_torchvision_teacher_evaluated_not_retrained_and_student_exported(
    folders, run_kdrun, tmp_path
):
    args = (
        "teacher=torchvision",
        "teacher.arch=resnet18",
        "dataset=image_folder",
        f"dataset.root={folders[0]}",
        *QUICK,
    )
    ok(run_kdrun(*args, run_dir=tmp_path / "trained"))
    weights = tmp_path / "trained" / "checkpoints" / "teacher.pt"
    run = tmp_path / "pre"
    p = run_kdrun(*args, f"teacher.weights={weights}", run_dir=run, store=tmp_path / "store2")
    ok(p)
    assert "pretrained" in p.stdout
    same_teacher(read_json(tmp_path / "trained" / "metrics.json"), read_json(run / "metrics.json"))
    assert "teacher" not in trained_stages(run)  # no teacher epoch ran
    # export: the student alone, its preprocessing beside it; ONNX checked by onnxruntime
    p = run_kdrun("export", str(run), "--format", "onnx")
    ok(p)
    assert "onnxruntime matches PyTorch on 64 test inputs" in p.stdout
    rec = json.loads((run / "export" / "student.onnx.json").read_text())
    assert rec["class_names"] == [f"digit_{c}" for c in range(4)]
    assert rec["input_shape"] == [3, 16, 16] and len(rec["mean"]) == 3
    state = torch.load(run / "checkpoints" / "student.pt", weights_only=True)
    x = torch.randn(5, 3, 16, 16)
    ref = student_from(rec, state)(x)
    ts = export_run(run, "torchscript")
    assert torch.allclose(torch.jit.load(str(ts.path))(x), ref, atol=1e-5)
    st = export_run(run, "safetensors", tmp_path / "s.safetensors")
    exported = load_file(str(st.path))
    assert exported.keys() == state.keys()  # the student's tensors only, no teacher
    assert torch.equal(student_from(rec, exported)(x), ref)


def test_custom_teacher_from_outside_the_package_on_an_npz(run_kdrun, tmp_path):
    user = write_user_module(tmp_path / "user")
    npz = write_digits_npz(tmp_path / "digits.npz")
    env = {"PYTHONPATH": f"{user}{os.pathsep}{REPO}"}
    args = (
        "teacher=custom",
        "teacher._target_=usernets.TinyNet",
        "teacher.width=4",
        "+teacher.act=gelu",
        "dataset=tensors",
        f"dataset.path={npz}",
        *QUICK,
    )
    ok(run_kdrun(*args, run_dir=tmp_path / "trained", env=env))
    weights = tmp_path / "trained" / "checkpoints" / "teacher.pt"
    run = tmp_path / "pre"
    ok(run_kdrun(*args, f"teacher.weights={weights}", run_dir=run, env=env))
    trained, pre = read_json(tmp_path / "trained" / "metrics.json"), read_json(run / "metrics.json")
    same_teacher(trained, pre)
    assert pre["teacher"]["model"] == "TinyNet" and pre["data"]["val_size"] == 200  # own val
    assert "teacher" not in trained_stages(run)
    # teacher.finetune_epochs=N: trained further (through the store), not just evaluated
    ft = tmp_path / "ft"
    ok(
        run_kdrun(
            *args, f"teacher.weights={weights}", "teacher.finetune_epochs=1", run_dir=ft, env=env
        )
    )
    t = read_json(ft / "metrics.json")["teacher"]
    assert t["source"] == "finetuned" and t["best_epoch"] == 1 and "teacher" in trained_stages(ft)


def test_streaming_equals_in_memory_and_the_store_tells_folders_apart(folders, run_kdrun, tmp_path):
    a, b = folders
    args = ("teacher=cnn", "teacher.channels=[8]", "dataset=image_folder", *QUICK)
    s1, s2 = tmp_path / "s1", tmp_path / "s2"
    ok(run_kdrun(*args, f"dataset.root={a}", run_dir=tmp_path / "mem", store=s1))
    ok(
        run_kdrun(
            *args,
            f"dataset.root={a}",
            "dataset.in_memory=false",
            run_dir=tmp_path / "disk",
            store=s2,
        )
    )
    mem, disk = (
        read_json(tmp_path / "mem" / "metrics.json"),
        read_json(tmp_path / "disk" / "metrics.json"),
    )
    for stage in ("teacher", "baseline", "student"):
        for k in ("test_acc", "val_acc", "last_test_acc", "best_epoch"):
            assert mem[stage][k] == disk[stage][k], (stage, k)
    assert disk["student"]["kl_to_teacher"] == mem["student"]["kl_to_teacher"]
    assert disk["from_store"]["teacher_logits"] is False  # the logit cache worked when streaming
    # another folder under the same data set name: nothing of folder a's is reused
    ok(run_kdrun(*args, f"dataset.root={b}", run_dir=tmp_path / "b", store=s1))
    other = read_json(tmp_path / "b" / "metrics.json")
    assert other["teacher"]["source"] == "trained" and other["baseline"]["source"] == "trained"
