"""kind=condense and method=data_free through the CLI: outputs, reuse, resume, bad input."""

from __future__ import annotations

import signal

import pytest
import torch

from tests.conftest import read_json
from tests.reliability_util import cli, start, wait_for

pytestmark = pytest.mark.slow

SMOKE = (
    "experiment=condense",
    "condense=smoke",
    "runtime.num_threads=1",
    "student.width=8",
    "student.train.epochs=2",
    "teacher.train.epochs=2",
)


def test_condense_smoke_writes_its_outputs_and_the_set_is_a_data_set(tmp_path):
    run = tmp_path / "run"
    r = cli(*SMOKE, f"hydra.run.dir={run}", f"store_dir={tmp_path / 's'}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    m = read_json(run / "metrics.json")
    c = m["condense"]
    for k in (
        "method",
        "ipc",
        "synthetic_acc",
        "synthetic_acc_std",
        "random_real_acc",
        "random_real_acc_std",
        "full_data_acc",
        "steps",
        "seconds",
    ):
        assert k in c, k
    assert (c["method"], c["ipc"], c["steps"]) == ("dm", 2, 4)
    assert len(c["per_seed"]["synthetic"]) == 2 and "synthetic_soft" in c["per_seed"]
    assert (run / "synthetic.png").stat().st_size > 0
    syn = torch.load(run / "synthetic.pt", weights_only=True)
    assert syn["images"].shape == (20, 1, 8, 8) and syn["soft_logits"].shape == (20, 10)
    assert "random real" in r.stdout and "full training split" in r.stdout
    # the synthetic set trains a later run; the test split is the digits' own
    run2 = tmp_path / "run2"
    r = cli(
        "experiment=smoke",
        "dataset=synthetic",
        f"dataset.path={run / 'synthetic.pt'}",
        "dataset.val_size=0.2",
        "runtime.num_threads=1",
        f"hydra.run.dir={run2}",
        f"store_dir={tmp_path / 's'}",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    m2 = read_json(run2 / "metrics.json")
    assert m2["data"]["train_size"] + m2["data"]["val_size"] == 20
    assert m2["data"]["test_size"] == m["data"]["test_size"]


def test_condense_killed_mid_way_resumes(tmp_path):
    """SIGKILL inside condensation, then the same command: it continues from the checkpoint
    beside the store artifact (that a resumed path equals an uninterrupted one is
    test_condense.py::test_condensation_resumes_exactly_after_a_stop)."""
    args = [
        *SMOKE,
        "condense.iterations=30",
        "condense.eval_seeds=1",
        "condense.eval_epochs=1",
        "condense.full_data=false",
        "condense.soft_labels=false",
    ]
    store, run = tmp_path / "s", tmp_path / "run"
    p = start(
        *args, f"hydra.run.dir={run}", f"store_dir={store}", cwd=tmp_path, log=tmp_path / "1.log"
    )
    wait_for(lambda: bool(list(store.glob("synthetic/*/partial.pt"))), p)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert read_json(run / "metrics.json")["status"] == "running"  # killed: no bookkeeping
    r = cli(*args, f"hydra.run.dir={run}", f"store_dir={store}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert read_json(run / "metrics.json")["condense"]["resumed_from"] > 0
    assert not list(store.glob("synthetic/*/partial.pt"))  # gone once the artifact is whole


def test_condense_bad_input_is_one_line(tmp_path):
    r = cli(
        *SMOKE,
        "condense.ipc=500",
        f"hydra.run.dir={tmp_path / 'r'}",
        f"store_dir={tmp_path / 's'}",
        cwd=tmp_path,
    )
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert lines[-1].startswith("kdrun: error: condense.ipc=500 but class")
    assert "condense.init=noise" in lines[-1]
    r = cli(*SMOKE, "condense.method=dd", f"hydra.run.dir={tmp_path / 'r2'}", cwd=tmp_path)
    assert r.returncode == 2 and "unknown condense.method 'dd'" in r.stderr


def test_data_free_smoke_sees_no_training_image(tmp_path):
    run = tmp_path / "run"
    r = cli(
        "experiment=smoke_data_free",
        "runtime.num_threads=1",
        f"hydra.run.dir={run}",
        f"store_dir={tmp_path / 's'}",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    m = read_json(run / "metrics.json")
    assert m["student"]["train_images_seen"] == 0
    assert m["baseline"]["test_acc"] > 0.5  # the real-data student, for comparison
    df = m["data_free"]
    assert df["generator_steps"] == 10 and df["samples"] == 10 * 64 and df["seconds"] > 0
    assert (run / "generated.png").stat().st_size > 0
    assert "baseline (real data)" in r.stdout and "distilled (data-free)" in r.stdout


def test_data_free_mnist_recipe_is_the_lenet5_pair_with_dafl_losses(tmp_path):
    from tests.test_data_sizes import mnist_root

    root = mnist_root(tmp_path / "mnist", n_train=600, n_test=100)
    run = tmp_path / "run"
    args = ["experiment=data_free_mnist", f"dataset.root={root}", "teacher.train.epochs=1"]
    args += ["student.train.epochs=1", "method.steps_per_epoch=2", "method.grid_per_class=1"]
    args += ["runtime.num_threads=1", f"hydra.run.dir={run}", f"store_dir={tmp_path / 's'}"]
    r = cli(*args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    cfg = (run / ".hydra" / "config.yaml").read_text()
    for line in ("name: lenet5\n", "name: lenet5_half\n", "generator_width: 32", "lr: 0.002"):
        assert line in cfg, line
    m = read_json(run / "metrics.json")
    assert m["student"]["train_images_seen"] == 0
    assert m["data_free"]["generator_steps"] == 2 and not m["data_free"]["adversarial"]
