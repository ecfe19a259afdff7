"""The whole pipeline through the CLI, in subprocesses, on the smoke config."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from tests.conftest import needs_fashion, read_json

STAGES = ("teacher", "baseline", "student")


def check_metrics_schema(m: dict) -> None:
    assert m["status"] == "completed"
    for k in ("dataset", "method", "T", "alpha", "seed", "versions", "config", "wall_seconds"):
        assert k in m
    for stage in STAGES:
        s = m[stage]
        for k in ("model", "params", "test_acc", "val_acc", "train_seconds"):
            assert k in s, (stage, k)
        assert 0 <= s["test_acc"] <= 1 and s["params"] > 0
    assert isinstance(m["teacher"]["from_cache"], bool)
    st = m["student"]
    assert 0 <= st["agreement"] <= 1 and st["kl_to_teacher"] >= 0
    assert len(st["per_class_acc"]) == m["data"]["num_classes"]
    # each number stored to 6 significant digits: the difference of two agrees within 1e-6
    assert m["kd_gain"] == pytest.approx(st["test_acc"] - m["baseline"]["test_acc"], abs=1e-6)
    assert "last_test_acc" in st and "best_epoch" in st


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """One smoke run shared by several tests (it takes a few seconds)."""
    import subprocess
    import sys

    from tests.conftest import kdrun_env

    tmp = tmp_path_factory.mktemp("smoke")
    run_dir = tmp / "run"
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "kdrun",
            "experiment=smoke",
            f"hydra.run.dir={run_dir}",
            f"store_dir={tmp / 'store'}",
        ],
        cwd=tmp,
        env=kdrun_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr
    return run_dir, p, tmp


def test_smoke_writes_every_output(smoke_run):
    run_dir, p, _ = smoke_run
    m = read_json(run_dir / "metrics.json")
    check_metrics_schema(m)
    assert m["experiment"] == "smoke" and m["dataset"] == "digits"
    assert m["teacher"]["from_cache"] is False
    for name in ("teacher.pt", "student.pt", "baseline.pt", "student_last.pt"):
        state = torch.load(run_dir / "checkpoints" / name, weights_only=True)
        assert isinstance(state, dict) and state
    assert not (run_dir / "checkpoints" / "student.partial.pt").exists()
    rows = list(csv.DictReader(open(run_dir / "history.csv")))
    assert {r["stage"] for r in rows} == set(STAGES)
    student_rows = [r for r in rows if r["stage"] == "student"]
    assert len(student_rows) == 2
    for r in student_rows:  # the loss is the sum of its soft and hard parts
        assert float(r["loss"]) == pytest.approx(float(r["loss_soft"]) + float(r["loss_hard"]))
    # the final table shows each stage and the KD gain
    for word in ("teacher", "baseline", "distilled", "KD gain"):
        assert word in p.stdout


def test_the_kd_gain_comes_with_its_paired_test(smoke_run):
    """metrics.json's evidence: McNemar's discordant counts give kd_gain exactly, the
    interval holds it, and the table's last line says interval, p and verdict."""
    from kdrun.report.evidence import binomial_two_sided_p

    run_dir, p, _ = smoke_run
    m = read_json(run_dir / "metrics.json")
    ev = m["evidence"]
    b, c = ev["discordant"]
    assert ev["test"] == "mcnemar-exact" and ev["n"] == m["data"]["test_size"]
    assert (c - b) / ev["n"] == pytest.approx(m["kd_gain"], abs=1e-6)
    assert ev["kd_gain_p"] == pytest.approx(binomial_two_sided_p(min(b, c), b + c), rel=1e-5)
    lo, hi = ev["kd_gain_ci"]
    assert lo <= m["kd_gain"] <= hi
    assert ev["verdict"] in ("KD helps", "KD hurts", "within noise", "tie")
    out = " ".join(p.stdout.split())  # the caption may wrap at any width
    assert "95% CI [" in out and f"discordant of {ev['n']}" in out
    assert m["data"]["student_val_size"] == m["data"]["val_size"]  # no class omitted


def test_auto_threads_are_fixed_by_rule_and_recorded(smoke_run):
    """runtime.num_threads=auto (the default): every stage trains on the job's count, recorded
    per stage; nothing is governed by timing (that is runtime.num_threads=adaptive)."""
    m = read_json(smoke_run[0] / "metrics.json")
    threads = m["threads"]
    assert m["threads_governor"] == {}
    assert {threads[s] for s in STAGES} == {threads["job"]}


def test_adaptive_threads_record_what_the_governor_did(run_kdrun, tmp_path):
    """runtime.num_threads=adaptive on a CPU: each stage's governor entry, every training step
    but the stage's first timed (the smoke stages are shorter than a window)."""
    p = run_kdrun("experiment=smoke", "runtime.num_threads=adaptive", run_dir=tmp_path / "run")
    assert p.returncode == 0, p.stderr
    m = read_json(tmp_path / "run" / "metrics.json")
    threads, governor = m["threads"], m["threads_governor"]
    if threads["job"] == 1:  # a 1-core machine: nothing to govern
        assert governor == {}
        return
    assert set(governor) == set(STAGES)
    for stage, g in governor.items():
        recipe = m["config"]["teacher" if stage == "teacher" else "student"]["train"]
        n = m["data"]["train_size" if stage == "teacher" else "student_train_size"]
        steps = recipe["epochs"] * math.ceil(n / recipe["batch_size"])
        assert sum(g["steps"].values()) == steps - 1, stage
        assert set(g["steps"]) == {"1", str(threads["job"])}
        assert g["final"] in (1, threads["job"]) and g["switches"] >= 0
        assert (g["final"] == threads[stage]) == (g["switches"] % 2 == 0)  # started there
        assert all(s > 0 for s in g["sec_per_step"].values()) and g["sec_per_step"]


@pytest.mark.slow
def test_baseline_and_student_share_init_and_alpha0_reproduces_baseline(run_kdrun, tmp_path):
    """With alpha=0 the KD loss is plain CE: same init + same batches => same model."""
    p = run_kdrun("experiment=smoke", "alpha=0", "runtime.num_threads=1", run_dir=tmp_path / "a0")
    assert p.returncode == 0, p.stderr
    m = read_json(tmp_path / "a0" / "metrics.json")
    assert m["student"]["test_acc"] == m["baseline"]["test_acc"]
    assert m["kd_gain"] == 0
    assert m["evidence"]["verdict"] == "tie" and m["evidence"]["discordant"] == [0, 0]
    assert "no image differs): a tie" in " ".join(p.stdout.split())
    a = torch.load(tmp_path / "a0/checkpoints/student.pt", weights_only=True)
    b = torch.load(tmp_path / "a0/checkpoints/baseline.pt", weights_only=True)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


@pytest.mark.slow
def test_teacher_is_reused_from_the_store(smoke_run, run_kdrun):
    _, _, tmp = smoke_run
    p = run_kdrun("experiment=smoke", "T=2", run_dir=tmp / "again", store=tmp / "store")
    assert p.returncode == 0, p.stderr
    m = read_json(tmp / "again" / "metrics.json")
    assert m["teacher"]["from_cache"] is True and m["baseline"]["from_cache"] is True
    first = read_json(smoke_run[0] / "metrics.json")
    assert m["teacher"]["test_acc"] == first["teacher"]["test_acc"]


@pytest.mark.slow
def test_teacher_checkpoint_loads_and_mismatch_is_clear(smoke_run, run_kdrun, tmp_path):
    run_dir = smoke_run[0]
    ckpt = run_dir / "checkpoints" / "teacher.pt"
    p = run_kdrun("experiment=smoke", f"teacher.checkpoint={ckpt}", run_dir=tmp_path / "ck")
    assert p.returncode == 0, p.stderr
    m = read_json(tmp_path / "ck" / "metrics.json")
    assert m["teacher"]["test_acc"] == read_json(run_dir / "metrics.json")["teacher"]["test_acc"]
    bad = run_kdrun(
        "experiment=smoke", "teacher=mlp", f"teacher.checkpoint={ckpt}", run_dir=tmp_path / "bad"
    )
    assert bad.returncode != 0
    assert "does not fit teacher=mlp" in bad.stderr and "Traceback" not in bad.stderr
    missing = run_kdrun(
        "experiment=smoke", "teacher.checkpoint=/nonexistent/t.pt", run_dir=tmp_path / "missing"
    )
    assert missing.returncode != 0 and "does not exist" in missing.stderr


@pytest.mark.slow
def test_no_baseline(run_kdrun, tmp_path):
    p = run_kdrun("experiment=smoke", "baseline=false", run_dir=tmp_path / "nb")
    assert p.returncode == 0, p.stderr
    m = read_json(tmp_path / "nb" / "metrics.json")
    assert m["baseline"] is None and m["kd_gain"] is None


@pytest.mark.slow
def test_design_card_example_resnet18_teacher(run_kdrun, tmp_path):
    p = run_kdrun(
        "experiment=smoke",
        "teacher=resnet18",
        "teacher.width=8",
        "student=mlp",
        "T=4",
        run_dir=tmp_path / "r18",
    )
    assert p.returncode == 0, p.stderr
    m = read_json(tmp_path / "r18" / "metrics.json")
    assert m["teacher"]["model"] == "resnet18" and m["student"]["model"] == "mlp"


def test_semantic_error_is_one_line_and_leaves_no_run_dir(run_kdrun, tmp_path):
    p = run_kdrun("experiment=smoke", "T=-1", run_dir=tmp_path / "neg")
    assert p.returncode == 2
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert lines == ["kdrun: error: T must be > 0 (got -1.0); try T=4"]
    assert not (tmp_path / "neg").exists()  # refused before Hydra makes the directory


def test_console_script_and_list(tmp_path):
    import shutil
    import subprocess

    from tests.conftest import kdrun_env

    exe = shutil.which("kdrun")
    if exe is None:
        pytest.skip("kdrun console script not installed")
    p = subprocess.run([exe, "list"], env=kdrun_env(), capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "digits" in p.stdout and "mlp" in p.stdout and "kd" in p.stdout


@needs_fashion
def test_smoke_on_fashion_mnist(run_kdrun, tmp_path):
    p = run_kdrun("experiment=smoke", "dataset=fashion_mnist", run_dir=tmp_path / "fm")
    assert p.returncode == 0, p.stderr
    m = read_json(tmp_path / "fm" / "metrics.json")
    check_metrics_schema(m)
    assert m["data"]["train_size"] == 1600 and m["data"]["test_size"] == 1000
    assert m["teacher"]["test_acc"] > 0.5  # real images: far above chance after 2 epochs
    assert not math.isnan(m["student"]["kl_to_teacher"])


@pytest.mark.slow
def test_teacherless_method_with_a_small_transfer_set(run_kdrun, tmp_path):
    """Analyses that need a teacher are skipped for dml; small_data still reports."""
    p = run_kdrun(
        "experiment=smoke", "method=dml", "dataset.train_fraction=0.5", run_dir=tmp_path / "dml"
    )
    assert p.returncode == 0, p.stderr
    m = read_json(tmp_path / "dml" / "metrics.json")
    assert m["teacher"] is None and m["small_data"]["teacher_test_acc"] is None
    assert 0 <= m["small_data"]["student_test_acc"] <= 1
