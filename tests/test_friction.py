"""A newcomer's mistakes (issue 25), one test each: a one-line error naming the fix, and a
config that fails its checks refused before any run directory exists (the CLI side of that:
tests/test_cli.py; these run in-process, without training)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from kdrun.cli.app import precheck, sweep_advice
from kdrun.cli.main import run
from kdrun.data.external import LoadHints, _scan_folder, load_tensors
from kdrun.errors import DataError
from kdrun.store.atomic import CorruptArtifact, load_weights
from tests.byo_util import write_image_folder


def refused(*overrides: str) -> str:
    """The one line a single run with these overrides is refused with (before Hydra runs)."""
    err = precheck(["experiment=smoke", *overrides], semantic=True)
    assert err is not None and "\n" not in err
    return err


def test_a_top_level_key_that_exists_deeper_is_suggested():
    err = precheck(["epochs=5"])
    assert "did you mean 'student.train.epochs' or 'teacher.train.epochs'?" in err


def test_an_option_instead_of_an_override_is_one_line(capsys):
    assert run(["--epochs", "5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "did you mean student.train.epochs=5 or teacher.train.epochs=5?" in err[0]


def test_entries_added_to_an_existing_section_name_the_plus_form():
    err = precheck(["teacher=custom", "teacher.kwargs={a: 1}"])
    assert err is not None and "\n" not in err
    assert "did you mean" not in err  # the key exists: suggesting it back says nothing
    assert "+teacher.kwargs.NAME=VALUE" in err


def test_a_decimal_comma_suggests_the_point():
    assert "did you mean alpha=0.9?" in refused("alpha=0,9")
    assert "kdrun -m T=1,4" in precheck(["T=1,4"])  # a sweep that forgot -m
    assert precheck(["-m", "T=1,4"]) is None


def test_a_wrong_type_says_an_integer():
    err = precheck(["teacher.train.epochs=two"])
    assert err.endswith("give teacher.train.epochs an integer")


def _job(sweep: Path, name: str, status: str, error_type: str | None = None) -> None:
    (sweep / name).mkdir(parents=True)
    m = {"status": status, "error_type": error_type}
    (sweep / name / "metrics.json").write_text(json.dumps(m))


def test_a_sweep_whose_failed_job_was_refused_does_not_suggest_resume(tmp_path):
    _job(tmp_path, "0", "completed")
    _job(tmp_path, "1", "failed", "ConfigError")
    advice = sweep_advice(tmp_path)
    assert "job(s) 1 of the sweep were refused for their config" in advice
    assert "kdrun resume" not in advice
    _job(tmp_path, "2", "interrupted")
    advice = sweep_advice(tmp_path)
    assert f"kdrun resume {tmp_path}` reruns only those" in advice and "job(s) 1 " in advice


@pytest.mark.parametrize("size", ["-4", "0", "[32,0]"])
def test_image_size_must_be_positive(size):
    assert f"dataset.image_size={size.replace(',', ', ')} is not a size" in refused(
        f"dataset.image_size={size}"
    )


def test_warmup_longer_than_training_is_refused():
    err = refused("student.train.warmup_epochs=50", "student.train.epochs=2")
    assert "student.train.warmup_epochs=50 is not below student.train.epochs=2" in err


def test_an_empty_store_dir_is_refused():
    assert "store_dir is empty" in refused("store_dir=")


def test_student_checkpoint_is_refused_and_teacher_checkpoint_must_exist(tmp_path):
    assert "only the teacher loads weights" in refused("student.checkpoint=/nonexistent.pt")
    assert "teacher.checkpoint=/nonexistent.pt does not exist" in refused(
        "teacher.checkpoint=/nonexistent.pt"
    )
    assert f"teacher.checkpoint={tmp_path} is a directory" in refused(
        f"teacher.checkpoint={tmp_path}"
    )


def test_random_bytes_are_not_called_pickled_objects(tmp_path):
    path = tmp_path / "teacher.pt"
    path.write_bytes(bytes([0x42]) + os.urandom(4095))
    with pytest.raises(CorruptArtifact, match="not a torch file"):
        load_weights(path)


def test_a_random_npz_gets_kdruns_own_line(tmp_path):
    path = tmp_path / "data.npz"
    path.write_bytes(b"\x80\x04" + os.urandom(4094))  # numpy would take it for a pickle
    with pytest.raises(DataError, match="is not a .npz file") as e:
        load_tensors(OmegaConf.create({"path": str(path)}), LoadHints())
    assert "unsafely" not in str(e.value)


def test_an_empty_class_folder_is_an_error_not_a_class(tmp_path):
    root = write_image_folder(tmp_path / "imgs", classes=3)
    (root / "train" / "zz_empty").mkdir()
    with pytest.raises(DataError, match=r"class folder\(s\) \['zz_empty'\] hold no images"):
        _scan_folder(OmegaConf.create({"root": str(root)}))


def _random_file(path: Path, first: bytes) -> Path:
    path.write_bytes(first + os.urandom(4096 - len(first)))
    return path


def test_a_random_bytes_teacher_checkpoint_is_refused_before_the_run(tmp_path):
    ck = _random_file(tmp_path / "teacher.pt", b"\x42")
    assert f"teacher.checkpoint={ck} is not a torch file" in refused(f"teacher.checkpoint={ck}")


def test_a_random_npz_is_refused_before_the_run(tmp_path):
    npz = _random_file(tmp_path / "data.npz", b"\x80\x04")  # numpy would take it for a pickle
    err = refused("dataset=tensors", f"dataset.path={npz}")
    assert f"dataset.path={npz} is not a .npz file" in err and "unsafely" not in err


@pytest.mark.parametrize("case", ["checkpoint", "npz", "directory"])
def test_a_file_refused_leaves_no_run_directory(tmp_path, capsys, case):
    """The CLI's single-run pre-check reads these files: no run directory is created."""
    arg = {
        "checkpoint": f"teacher.checkpoint={_random_file(tmp_path / 't.pt', b'x')}",
        "npz": f"dataset.path={_random_file(tmp_path / 'd.npz', b'x')}",
        "directory": f"teacher.checkpoint={tmp_path}",
    }[case]
    extra = ["dataset=tensors"] if case == "npz" else []
    run_dir = tmp_path / "run"
    assert run(["experiment=smoke", *extra, arg, f"hydra.run.dir={run_dir}"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not run_dir.exists()
