"""Sweeps: teacher trained once, summary files and plots, failed jobs, launchers, summarize."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from kdrun.cli import missing_launcher
from kdrun.report.sweep import aggregate, collect, summarize
from tests.conftest import kdrun_env, read_json

PNG = b"\x89PNG\r\n\x1a\n"
SMOKE = ["experiment=smoke", "runtime.num_threads=1"]


def kdrun(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: int = 300):
    return subprocess.run(
        [sys.executable, "-m", "kdrun", *args],
        cwd=cwd,
        env=kdrun_env(**(env or {})),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def sweep(tmp: Path, *args: str, env: dict[str, str] | None = None):
    """A multirun in tmp/sweep with its own store; returns (process, summary.json or None)."""
    r = kdrun(
        "-m",
        *SMOKE,
        *args,
        f"store_dir={tmp}/store",
        f"hydra.sweep.dir={tmp}/sweep",
        cwd=tmp,
        env=env,
    )
    p = tmp / "sweep" / "summary.json"
    return r, (read_json(p) if p.is_file() else None)


def trained(doc: dict, stage: str) -> int:
    """How many jobs trained ``stage`` themselves (not from the store)."""
    return sum(j[f"{stage}_from_cache"] is False for j in doc["jobs"])


@pytest.fixture(scope="module")
def smoke_sweep(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("smoke_sweep")
    r, doc = sweep(tmp, "T=1,4", "alpha=0.5,0.9")
    return tmp / "sweep", r, doc


# --------------------------------------------------------------------------- CLI sweeps
@pytest.mark.slow
def test_smoke_sweep_trains_teacher_once_and_summarizes(smoke_sweep):
    d, r, doc = smoke_sweep
    assert r.returncode == 0, r.stderr[-2000:]
    assert doc["n_jobs"] == 4 and doc["n_failed"] == 0
    assert trained(doc, "teacher") == 1 and trained(doc, "baseline") == 1
    assert {(j["T"], j["alpha"]) for j in doc["jobs"]} == {(1, 0.5), (1, 0.9), (4, 0.5), (4, 0.9)}
    ms = [read_json(Path(j["run_dir"]) / "metrics.json") for j in doc["jobs"]]
    for kind in ("teacher", "baseline", "teacher_logits", "teacher_test_logits"):
        assert [m["from_store"][kind] for m in ms].count(False) == 1, kind  # built once
    for j, m in zip(doc["jobs"], ms, strict=True):  # the summary holds what each job recorded
        assert j["student_acc"] == m["student"]["test_acc"]
        gain = m["student"]["test_acc"] - m["baseline"]["test_acc"]
        assert j["kd_gain"] == pytest.approx(gain, abs=1e-6)  # 6 significant digits each
        assert j["teacher_from_cache"] == m["teacher"]["from_cache"]
    rows = list(csv.DictReader((d / "summary.csv").open()))
    assert [r_["row"] for r_ in rows] == ["job"] * 4
    assert {
        "T",
        "alpha",
        "seed",
        "status",
        "student_acc",
        "kd_gain",
        "agreement",
        "wall_seconds",
    } <= set(rows[0])
    for name in ("heatmap.png", "acc_vs_T.png"):
        data = (d / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 5000
    # The table: sorted by student accuracy, the best first.
    best = max(doc["jobs"], key=lambda j: j["student_acc"])
    lines = [ln for ln in r.stdout.splitlines() if "completed" in ln and "│" in ln]
    assert len(lines) == 4 and f"{100 * best['student_acc']:.2f}%" in lines[0]
    assert "4 job(s): 4 completed" in r.stdout


def cli_main(*argv: str) -> int:
    """The kdrun entry point, in this process (no interpreter start-up to pay)."""
    from kdrun.cli import main

    with pytest.raises(SystemExit) as e:
        main(list(argv))
    return e.value.code


@pytest.mark.slow
def test_summarize_rebuilds_a_sweep_directory(smoke_sweep):
    d, _, doc = smoke_sweep
    before = (d / "summary.csv").read_text()
    for name in ("summary.csv", "summary.json", "heatmap.png", "acc_vs_T.png"):
        (d / name).unlink()
    assert cli_main("summarize", str(d)) == 0
    assert (d / "summary.csv").read_text() == before
    assert read_json(d / "summary.json")["jobs"] == doc["jobs"]
    assert (d / "heatmap.png").is_file() and (d / "acc_vs_T.png").is_file()


@pytest.mark.parametrize(
    "args, msg",
    [
        (["/no/such/dir"], "is not a directory"),
        ([], "usage: kdrun summarize DIR"),
        (["{tmp}"], "holds no job"),
        (["{tmp}/sweeps"], "holds several sweeps"),
    ],
)
def test_summarize_bad_directory_is_one_line(tmp_path, capsys, args, msg):
    for name in ("a", "b"):
        (tmp_path / "sweeps" / name).mkdir(parents=True)
        (tmp_path / "sweeps" / name / "multirun.yaml").write_text("{}\n")
    assert cli_main("summarize", *[a.format(tmp=tmp_path) for a in args]) == 2
    err = capsys.readouterr().err
    assert msg in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_failed_cell_keeps_the_others_and_seeds_share_the_teacher(tmp_path):
    r, doc = sweep(tmp_path, "T=-1,4", "alpha=0.9", "seed=0,1")
    assert r.returncode == 2  # the ConfigError's code, the worst of the jobs
    by = {(j["T"], j["seed"]): j for j in doc["jobs"]}
    for s in (0, 1):
        assert by[(-1, s)]["status"] == "failed"
        assert "T must be > 0" in by[(-1, s)]["error"]
        assert by[(4, s)]["status"] == "completed"
    assert trained(doc, "teacher") == 1  # one teacher for every seed
    assert trained(doc, "baseline") == 2  # one baseline per seed
    agg = {a["T"]: a for a in doc["aggregates"]}
    assert agg[4]["n"] == 2 and agg[4]["n_failed"] == 0 and agg[4]["seeds"] == [0, 1]
    accs = [by[(4, s)]["student_acc"] for s in (0, 1)]
    assert agg[4]["student_acc_mean"] == pytest.approx(sum(accs) / 2)
    assert agg[4]["student_acc_std"] == pytest.approx(abs(accs[0] - accs[1]) / math.sqrt(2))
    assert agg[-1]["n"] == 0 and agg[-1]["n_failed"] == 2 and agg[-1]["student_acc_mean"] is None
    assert "failed job 0" in r.stdout and "T must be > 0" in r.stdout
    rows = list(csv.DictReader((tmp_path / "sweep" / "summary.csv").open()))
    assert [x["row"] for x in rows].count("mean_std") == 2
    # Rebuilding on demand reports the failure too.
    r2 = kdrun("summarize", str(tmp_path / "sweep"), cwd=tmp_path)
    assert r2.returncode == 2 and "failed job 1" in r2.stdout


@pytest.mark.slow
def test_joblib_two_workers_train_the_teacher_once(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    # An interactive-looking terminal: parallel jobs must still log lines, not draw bars.
    r, doc = sweep(
        tmp_path,
        "T=1,4",
        "alpha=0.5,0.9",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "runtime.progress=auto",
        env={"TTY_COMPATIBLE": "1"},
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert doc["n_jobs"] == 4 and doc["n_failed"] == 0
    assert trained(doc, "teacher") == 1 and trained(doc, "baseline") == 1
    assert "\x1b[?25l" not in r.stdout  # rich hides the cursor only for live progress bars
    assert r.stdout.count("student epoch 2:") == 4


@pytest.mark.slow
def test_a_joblib_job_equals_the_same_job_run_alone(tmp_path):
    """auto threads in a joblib sweep: the cores are shared by rule (n_jobs), each job records
    its count, and the same job run alone at that count, on a fresh store, gives the same
    numbers bit for bit."""
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    from tests.reliability_util import numbers

    args = ("experiment=smoke", "student.train.epochs=1", "teacher.train.epochs=1")
    r = kdrun(
        "-m",
        *args,
        "seed=0,1",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        f"store_dir={tmp_path}/store",
        f"hydra.sweep.dir={tmp_path}/sweep",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    (job,) = [
        d.parent for d in (tmp_path / "sweep").glob("*/metrics.json") if read_json(d)["seed"] == 1
    ]
    threads = read_json(job / "metrics.json")["threads"]
    assert len(set(threads.values())) == 1  # every stage on the job's count
    alone = tmp_path / "alone"
    r = kdrun(
        *args,
        "seed=1",
        f"runtime.num_threads={threads['job']}",
        f"store_dir={tmp_path}/store_alone",
        f"hydra.run.dir={alone}",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert numbers(alone) == numbers(job)


@pytest.mark.slow
def test_submitit_local_failed_job_sets_exit_code(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    # Jobs run in other processes: only the end-of-sweep callback can set the exit status.
    r, doc = sweep(tmp_path, "T=-1,4", "alpha=0.9", "hydra/launcher=submitit_local")
    assert r.returncode == 2, r.stderr[-2000:]
    assert [j["status"] for j in doc["jobs"]] == ["failed", "completed"]
    assert doc["jobs"][1]["teacher_from_cache"] is False


def test_interrupted_job_is_summarised_as_interrupted(tmp_path, monkeypatch):
    """An interrupted job shows up as such, and the summary exits 130 (stopping the rest of
    the sweep is cli.SweepInterrupted's job, tested over the CLI in test_resume.py)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import kdrun.experiments.job as job
    from kdrun.config import config_dir
    from kdrun.errors import Interrupted
    from kdrun.experiments.kinds import KINDS

    def stopped(*a, **k):  # what fit raises once the stop flag is set
        raise Interrupted("teacher stopped at epoch 3")

    monkeypatch.setitem(KINDS, "distill", stopped)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("config", [*SMOKE, f"store_dir={tmp_path}/store"])
    GlobalHydra.instance().clear()
    (tmp_path / "multirun.yaml").write_text("{}\n")
    assert job.run_job(cfg, tmp_path / "0", multirun=True) == 130
    s = summarize(tmp_path)
    assert [j["status"] for j in s.jobs] == ["interrupted"]
    assert s.jobs[0]["error"] == "teacher stopped at epoch 3" and s.exit_code == 130


def test_config_sweeps_and_slurm_launcher_compose():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from kdrun.config import config_dir

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        c = compose("config", ["experiment=sweep_t_alpha"], return_hydra_config=True)
        assert dict(c.hydra.sweeper.params) == {"T": "1,2,4,8", "alpha": "0.1,0.5,0.9"}
        if missing_launcher("hydra/launcher=slurm") is None:
            c = compose("config", ["hydra/launcher=slurm"], return_hydra_config=True)
            assert c.hydra.launcher._target_.endswith("SlurmLauncher")
            assert c.hydra.launcher.array_parallelism == 16
    GlobalHydra.instance().clear()


def test_missing_launcher_names_the_extra(monkeypatch):
    import kdrun.cli as cli

    monkeypatch.setitem(cli.LAUNCHER_EXTRAS, "joblib", ("no_such_pkg.launcher", "joblib"))
    assert missing_launcher("hydra/launcher=joblib") == (
        "hydra/launcher=joblib needs an extra: pip install 'kdrun[joblib]'"
    )
    assert missing_launcher("hydra/launcher=basic") is None
    assert missing_launcher("T=4") is None


# --------------------------------------------------------------------------- no training
def fake_job(d: Path, overrides: list[str], **m) -> None:
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if m:
        (d / "metrics.json").write_text(json.dumps(m))


def fake_metrics(T: float, alpha: float, seed: int, s: float, b: float, t: float = 0.9) -> dict:
    return {
        "status": "completed",
        "T": T,
        "alpha": alpha,
        "seed": seed,
        "dataset": "digits",
        "teacher": {"test_acc": t, "from_cache": seed > 0, "train_seconds": 1.0},
        "baseline": {"test_acc": b, "from_cache": False, "train_seconds": 0.5},
        "student": {"test_acc": s, "agreement": s - 0.01, "train_seconds": 0.5},
        "kd_gain": s - b,
        "wall_seconds": 2.0,
    }


def test_aggregate_mean_and_sample_std_over_seeds(tmp_path):
    (tmp_path / "multirun.yaml").write_text("{}\n")
    accs = {(1.0, 0): 0.80, (1.0, 1): 0.84, (1.0, 2): 0.85, (4.0, 0): 0.70, (4.0, 1): 0.76}
    n = 0
    for (T, seed), acc in accs.items():
        fake_job(
            tmp_path / str(n),
            [f"T={T:g}", "alpha=0.5", f"seed={seed}", "store_dir=s"],
            **fake_metrics(T, 0.5, seed, acc, 0.75 + seed / 100),
        )
        n += 1
    fake_job(
        tmp_path / str(n),
        ["T=4", "alpha=0.5", "seed=2", "store_dir=s"],
        status="failed",
        T=4.0,
        alpha=0.5,
        seed=2,
        error="boom",
        error_type="ConfigError",
    )
    fake_job(tmp_path / "10", ["T=8", "alpha=0.5", "seed=0", "store_dir=s"])  # never started
    keys, jobs = collect(tmp_path)
    assert keys == []  # store_dir is the same everywhere: not a swept key
    assert [j["job"] for j in jobs] == ["0", "1", "2", "3", "4", "5", "10"]  # numeric order
    assert jobs[-1]["status"] == "missing" and jobs[-1]["T"] == 8.0
    agg = {a["T"]: a for a in aggregate(jobs, keys)}
    x = [0.80, 0.84, 0.85]
    mean = sum(x) / 3
    assert agg[1.0]["student_acc_mean"] == pytest.approx(mean)
    assert agg[1.0]["student_acc_std"] == pytest.approx(
        math.sqrt(sum((v - mean) ** 2 for v in x) / 2)  # sample std (n - 1)
    )
    assert agg[1.0]["baseline_acc_mean"] == pytest.approx(0.76)
    assert agg[4.0]["n"] == 2 and agg[4.0]["n_failed"] == 1
    assert agg[4.0]["student_acc_mean"] == pytest.approx(0.73)
    assert agg[8.0]["n"] == 0 and agg[8.0]["student_acc_std"] is None
    s = summarize(tmp_path)
    assert s.exit_code == 2  # ConfigError's code beats the missing job's 1
    assert len(s.failed) == 2
    assert (tmp_path / "heatmap.png").read_bytes().startswith(PNG)
    # One seed: no aggregate rows.
    assert aggregate([j for j in jobs if j["seed"] == 0], keys) == []


def test_other_swept_keys_become_columns(tmp_path):
    (tmp_path / "multirun.yaml").write_text("{}\n")
    for i, ds in enumerate(["digits", "mnist"]):
        fake_job(tmp_path / str(i), [f"dataset={ds}", "T=4"], **fake_metrics(4.0, 0.9, 0, 0.8, 0.7))
    keys, jobs = collect(tmp_path)
    assert keys == ["dataset"] and [j["dataset"] for j in jobs] == ["digits", "mnist"]
    s = summarize(tmp_path)
    assert s.exit_code == 0 and (tmp_path / "acc_vs_T.png").is_file()


def test_store_key_covers_the_data_limits():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from kdrun.config import config_dir
    from kdrun.experiments.keys import data_section

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        specs = [
            data_section(compose("config", overrides=ov), "teacher", "files:x")
            for ov in ([], ["dataset.limit_train=500"], ["dataset.limit_test=100"])
        ]
    assert specs[0] != specs[1] and specs[0] != specs[2] and specs[1] != specs[2]


def test_atomic_writes_get_the_umask_mode(tmp_path):
    import os

    from kdrun.store import atomic_write_text

    atomic_write_text("x", tmp_path / "f.txt")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o666 & ~umask


# --------------------------------------------------------------------------- language models
def fake_lm_metrics(T: float, seed: int, s: float, val: float, b: float = 7.40) -> dict:
    """A completed lm job's metrics.json, shaped like `kdrun experiment=smoke_lm`'s: bits per
    byte (lower is better) and no accuracy anywhere; kd_gain = baseline - student bpb."""

    def stage(bpb: float, val_bpb: float, **kw) -> dict:
        loss = bpb * math.log(2)
        return {
            "model": "gpt",
            "params": 7920,
            "test_loss": loss,
            "test_ppl": math.exp(loss),
            "test_bpb": bpb,
            "val_bpb": val_bpb,
            "last_test_bpb": bpb,
            "train_seconds": 0.1,
            **kw,
        }

    return {
        "status": "completed",
        "dataset": "pystdlib",
        "method": "kd",
        "T": T,
        "alpha": 0.5,
        "seed": seed,
        "config": {"teacher": {"name": "gpt"}, "student": {"name": "gpt"}},
        "task": "lm",
        "effective": {"T": T, "alpha": 0.5},
        "teacher": stage(7.07, 7.23, from_cache=seed > 0, source="trained"),
        "baseline": stage(b, b + 0.08, from_cache=False, agreement=0.94, kl_to_teacher=0.0076),
        "student": stage(
            s, val, agreement=0.95, kl_to_teacher=0.0066, last_val_bpb=val, best_epoch=2
        ),
        "kd_gain": b - s,
        "wall_seconds": 1.8,
    }


def lm_sweep(d: Path) -> dict[str, tuple[float, float]]:
    """Three completed lm jobs and a failed one: job 1 has the lowest validation bpb (not the
    lowest test bpb: the pick must follow validation), job 2 the highest."""
    (d / "multirun.yaml").write_text("{}\n")
    jobs = {"0": (1.0, 7.37, 7.45), "1": (2.0, 7.36, 7.41), "2": (4.0, 7.35, 7.60)}
    for name, (T, s, val) in jobs.items():
        fake_job(d / name, [f"T={T:g}", "experiment=smoke_lm"], **fake_lm_metrics(T, 0, s, val))
    fake_job(  # failed before recording its task: known by its data set
        d / "3",
        ["T=-1", "experiment=smoke_lm"],
        status="failed",
        dataset="pystdlib",
        T=-1.0,
        alpha=0.5,
        seed=0,
        error="T must be > 0",
        error_type="ConfigError",
    )
    return {k: (s, val) for k, (_, s, val) in jobs.items()}


def test_lm_sweep_summary_reports_bits_per_byte_and_picks_the_lowest_val_bpb(tmp_path, caplog):
    from rich.console import Console

    from kdrun.report.sweep import best_by_val, sweep_metric

    jobs = lm_sweep(tmp_path)
    keys, rows = collect(tmp_path)
    metric = sweep_metric(rows)
    assert (metric.task, metric.headline, metric.higher_is_better) == ("lm", "test_bpb", False)
    assert [r["task"] for r in rows] == ["lm"] * 4
    by = {r["job"]: r for r in rows}
    for name, (s, val) in jobs.items():
        r = by[name]
        assert (r["student_bpb"], r["student_val_bpb"]) == (s, val)
        assert (r["teacher_bpb"], r["baseline_bpb"]) == (7.07, 7.40)
        assert r["kd_gain"] == pytest.approx(7.40 - s)  # in bpb, positive: KD helped
        assert "student_acc" not in r and "student_val" not in r  # no accuracy read as 0/NaN
    assert by["3"]["status"] == "failed" and by["3"]["student_bpb"] is None
    assert best_by_val(rows, metric)["job"] == "1"  # min val_bpb (max would be job 2)

    console = Console(width=200, record=True)
    with caplog.at_level("WARNING", logger="kdrun"):
        s = summarize(tmp_path, console)
    assert not caplog.records  # both plots drawn
    assert s.exit_code == 2 and len(s.failed) == 1
    out = console.export_text()
    assert "best by validation bits per byte: T=2, alpha=0.5, seed=0" in out
    assert "(val 7.4100, test 7.3600; job 1)" in out
    assert "student bpb" in out and "lower is better" in out
    table = [ln for ln in out.splitlines() if "completed" in ln and "│" in ln]
    assert [ln.split("│")[1].strip() for ln in table] == ["4", "2", "1"]  # lowest bpb first
    assert "+0.0500 bpb" in table[0] and "%" not in table[0].split("│")[4]
    doc = read_json(tmp_path / "summary.json")
    assert doc["task"] == "lm" and doc["metric"]["selection"] == "val_bpb"
    assert doc["metric"]["columns"]["student"] == "student_bpb"
    header = (tmp_path / "summary.csv").read_text().splitlines()[0].split(",")
    assert {"teacher_bpb", "baseline_bpb", "student_bpb", "kd_gain"} <= set(header)
    assert not any("acc" in c for c in header)
    for name in ("heatmap.png", "acc_vs_T.png"):
        assert (tmp_path / name).read_bytes().startswith(PNG)


def test_lm_sweep_seeds_aggregate_in_bits_per_byte(tmp_path):
    (tmp_path / "multirun.yaml").write_text("{}\n")
    for i, (T, seed, s) in enumerate([(1.0, 0, 7.30), (1.0, 1, 7.34), (4.0, 0, 7.50)]):
        fake_job(
            tmp_path / str(i),
            [f"T={T:g}", f"seed={seed}"],
            **fake_lm_metrics(T, seed, s, s + 0.05),
        )
    keys, rows = collect(tmp_path)
    agg = {a["T"]: a for a in aggregate(rows, keys)}
    assert agg[1.0]["student_bpb_mean"] == pytest.approx(7.32)
    assert agg[1.0]["student_bpb_std"] == pytest.approx(0.04 / math.sqrt(2))
    assert agg[1.0]["kd_gain_mean"] == pytest.approx(0.08)
    assert "student_acc_mean" not in agg[1.0]
    s = summarize(tmp_path)
    assert s.exit_code == 0 and s.metric.col("student") == "student_bpb"


def test_a_sweep_of_two_tasks_is_one_line(tmp_path, capsys):
    (tmp_path / "multirun.yaml").write_text("{}\n")
    fake_job(tmp_path / "0", ["dataset=digits"], **fake_metrics(4.0, 0.9, 0, 0.8, 0.7))
    fake_job(tmp_path / "1", ["dataset=pystdlib"], **fake_lm_metrics(4.0, 0, 7.3, 7.4))
    assert cli_main("summarize", str(tmp_path)) == 2
    err = capsys.readouterr().err
    assert "completed jobs of several tasks (classify, lm)" in err
    assert len(err.strip().splitlines()) == 1


# --------------------------------------------------------------------------- evidence
def _with_val(m: dict, val: float, n_val: int = 144, **evidence) -> dict:
    m["student"]["val_acc"] = val
    m["data"] = {"val_size": n_val, "student_val_size": n_val}
    if evidence:
        m["evidence"] = {"test": "mcnemar-exact", **evidence}
    return m


def _summarize_text(d: Path):
    from rich.console import Console

    console = Console(width=250, record=True)
    s = summarize(d, console)
    return s, console.export_text()


def test_a_tie_for_best_is_reported_as_a_tie_and_framed_on_the_heat_map(tmp_path):
    (tmp_path / "multirun.yaml").write_text("{}\n")
    grid = [(T, a) for T in (1.0, 4.0, 8.0) for a in (0.5, 0.9)]
    for i, (T, a) in enumerate(grid):
        m = _with_val(fake_metrics(T, a, 0, 0.97 + i / 1000, 0.96), 142 / 144)
        fake_job(tmp_path / str(i), [f"T={T:g}", f"alpha={a:g}"], **m)
    s, out = _summarize_text(tmp_path)
    assert (
        "6 settings tie at 98.61% validation accuracy (144 images): T=1 alpha=0.5, "
        "T=1 alpha=0.9, T=4 alpha=0.5, T=4 alpha=0.9, T=8 alpha=0.5, T=8 alpha=0.9"
    ) in out
    assert "best by validation" not in out  # no silent pick of one of them
    assert "test 97.00% to 97.50%" in out
    assert (tmp_path / "heatmap.png").read_bytes().startswith(PNG)
    from kdrun.report.sweep import choose

    c = choose(s)
    assert len(c.ties) == 6 and c.near == []
    sel = read_json(tmp_path / "summary.json")["selection"]
    assert len(sel["ties"]) == 6 and sel["ties"][0] == "T=1 alpha=0.5"


def test_settings_within_noise_of_the_best_are_named(tmp_path):
    (tmp_path / "multirun.yaml").write_text("{}\n")
    vals = {1.0: 140 / 144, 4.0: 137 / 144, 8.0: 120 / 144}  # 97.2%, 95.1%, 83.3%
    for i, (T, v) in enumerate(vals.items()):
        fake_job(tmp_path / str(i), [f"T={T:g}"], **_with_val(fake_metrics(T, 0.9, 0, 0.9, 0.8), v))
    s, out = _summarize_text(tmp_path)
    assert "best by validation accuracy: T=1, alpha=0.9, seed=0 (val 97.22%" in out
    lo, hi = __import__("kdrun.report.evidence", fromlist=["wilson"]).wilson(140, 144)
    assert lo < 137 / 144 < hi and not lo < 120 / 144  # the test's premise
    line = next(ln for ln in out.splitlines() if "within noise of it" in ln)
    assert "Wilson interval over 144 validation images" in line
    assert "T=4 alpha=0.9 (95.14%)" in line and "T=8" not in line
    sel = read_json(tmp_path / "summary.json")["selection"]
    assert sel["best"] == "T=1 alpha=0.9" and sel["within_noise"] == ["T=4 alpha=0.9"]
    assert sel["interval"] == pytest.approx([lo, hi])


def test_a_seed_sweep_ends_with_a_table_per_setting(tmp_path):
    from kdrun.report.evidence import t_interval

    (tmp_path / "multirun.yaml").write_text("{}\n")
    runs = [(0, 0.95, 0.90, 0.004), (1, 0.96, 0.91, 0.01), (2, 0.94, 0.92, 0.3)]
    for seed, s_acc, b_acc, p in runs:
        m = _with_val(
            fake_metrics(4.0, 0.9, seed, s_acc, b_acc),
            0.95,
            kd_gain_ci=[s_acc - b_acc - 0.02, s_acc - b_acc + 0.02],
            kd_gain_p=p,
            verdict="KD helps" if p < 0.05 else "within noise",
        )
        fake_job(tmp_path / str(seed), [f"seed={seed}"], **m)
    s, out = _summarize_text(tmp_path)
    (a,) = s.aggregates
    gains = [s_acc - b_acc for _, s_acc, b_acc, _ in runs]
    assert a["kd_gain_ci"] == pytest.approx(t_interval(gains)["ci"])
    assert [r["kd_gain_p"] for r in a["per_seed"]] == [0.004, 0.01, 0.3]
    assert "seeds · T=4 alpha=0.9" in out
    assert "mean ± std" in out and "95% CI (t)" in out and "KD gain (points)" in out
    assert "+5.00" in out and "0.004" in out
    t_row = next(ln for ln in out.splitlines() if "95% CI (t)" in ln)
    lo, hi = (100 * v for v in a["kd_gain_ci"])
    assert f"[{lo:+.2f}, {hi:+.2f}]" in t_row and "within noise" in t_row
    doc = read_json(tmp_path / "summary.json")
    assert doc["aggregates"][0]["kd_gain_ci"] == pytest.approx(a["kd_gain_ci"])
    rows = list(csv.DictReader((tmp_path / "summary.csv").open()))
    assert rows[0]["kd_gain_p"] == "0.004" and rows[-1]["kd_gain_ci"]
