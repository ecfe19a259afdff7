"""Optuna search over (T, alpha), the logger and launcher config groups, and the trackers on a
real job."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from kdrun.cli.app import precheck
from kdrun.config import config_dir
from kdrun.experiments.job import TrialFailed, search_objective
from kdrun.store import atomic_write_json
from tests.conftest import read_json
from tests.reliability_util import cli


def _compose(*overrides: str, hydra: bool = False):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=hydra)


def test_logger_group_composes_one_or_several_trackers():
    assert _compose().logger == {}
    assert set(_compose("logger=tensorboard").logger) == {"tensorboard"}
    assert set(_compose("logger=[tensorboard,mlflow]").logger) == {"tensorboard", "mlflow"}
    cfg = _compose("logger=many_loggers")
    assert cfg.logger.mlflow.save_dir == "outputs/mlruns"
    assert cfg.logger.tensorboard.save_dir == "outputs/tensorboard"


def test_search_and_slurm_ddp_configs_compose():
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    cfg = _compose("hparams_search=t_alpha_optuna", "experiment=smoke", hydra=True)
    sw = cfg.hydra.sweeper
    assert "OptunaSweeper" in sw._target_ and sw.direction == "maximize"
    assert sw.params == {"T": "tag(log, interval(1, 20))", "alpha": "interval(0, 1)"}
    assert "TPESampler" in sw.sampler._target_ and sw.storage.startswith("sqlite:///")
    assert cfg.optimized_metric == "student.val_acc"
    cfg = _compose("hydra/launcher=slurm_ddp", "hydra.launcher.nodes=2", hydra=True)
    la = cfg.hydra.launcher
    assert (la.nodes, la.tasks_per_node, la.gpus_per_node) == (2, 4, 4)
    assert "SlurmLauncher" in la._target_


def test_lm_search_minimises_val_bpb_and_a_wrong_objective_is_refused(monkeypatch):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    from omegaconf import OmegaConf

    from kdrun.errors import ConfigError
    from kdrun.experiments import checks

    cfg = _compose("hparams_search=t_alpha_optuna_lm", "experiment=smoke_lm", hydra=True)
    assert cfg.optimized_metric == "student.val_bpb"
    assert cfg.hydra.sweeper.direction == "minimize"
    job = _compose("hparams_search=t_alpha_optuna_lm", "experiment=smoke_lm")

    def searching(direction: str) -> None:
        hc = OmegaConf.create(
            {
                "sweeper": {
                    "_target_": "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper",
                    "direction": direction,
                }
            }
        )
        monkeypatch.setattr(checks, "current_hydra_config", lambda: hc)

    searching("minimize")
    checks.validate(job)  # the lm search as shipped passes
    job.optimized_metric = "student.val_acc"  # the image search's objective on an lm job
    with pytest.raises(ConfigError, match="use optimized_metric=student.val_bpb") as e:
        checks.validate(job)
    assert "hparams_search=t_alpha_optuna_lm" in str(e.value) and "\n" not in str(e.value)
    job.optimized_metric = "student.val_bpb"
    searching("maximize")  # the right metric, the wrong direction
    with pytest.raises(ConfigError, match="hydra.sweeper.direction=minimize"):
        checks.validate(job)
    image = _compose("hparams_search=t_alpha_optuna", "experiment=smoke")
    searching("maximize")
    checks.validate(image)
    monkeypatch.setattr(checks, "current_hydra_config", lambda: None)  # not a search
    job.optimized_metric = "student.val_acc"
    checks.validate(job)


def test_missing_plugin_is_a_one_line_error(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if "hydra_plugins" in n else real(n, *a)
    )
    assert precheck(["hparams_search=t_alpha_optuna"]) == (
        "hparams_search=t_alpha_optuna needs an extra: pip install 'kdrun[optuna]'"
    )
    assert "pip install 'kdrun[slurm]'" in precheck(["hydra/launcher=slurm_ddp"])


def test_search_objective_reads_validation_and_fails_unfinished_jobs(tmp_path):
    atomic_write_json(
        {"status": "completed", "student": {"val_acc": 0.9, "test_acc": 0.8}},
        tmp_path / "metrics.json",
    )
    assert search_objective(tmp_path, "student.val_acc") == 0.9
    with pytest.raises(TrialFailed, match="no number at student.nope"):
        search_objective(tmp_path, "student.nope")
    atomic_write_json({"status": "failed", "error": "loss became nan"}, tmp_path / "metrics.json")
    with pytest.raises(TrialFailed, match="loss became nan"):
        search_objective(tmp_path, "student.val_acc")


SMALL = (
    "experiment=smoke",
    "teacher=mlp",
    "teacher.hidden=[32]",
    "student.hidden=[16]",
    "runtime.num_threads=1",
)


@pytest.mark.slow
def test_optuna_search_shares_one_teacher_resumes_and_tracks(tmp_path):
    optuna = pytest.importorskip("optuna")
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    db = tmp_path / "search" / "study.db"
    args = [
        "-m",
        "hparams_search=t_alpha_optuna",
        *SMALL,
        f"store_dir={tmp_path / 'store'}",
        f"hydra.sweeper.storage=sqlite:///{db}",
        "hydra.sweeper.study_name=s",
        f"hydra.sweep.dir={tmp_path / 'sweep1'}",
    ]
    r = cli(*args, "hydra.sweeper.n_trials=3", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert len(list((tmp_path / "store" / "teacher").glob("*/payload.pt"))) == 1  # one teacher
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{db}")
    assert len(study.trials) == 3
    jobs = read_json(tmp_path / "sweep1" / "summary.json")["jobs"]
    best = max(jobs, key=lambda j: j["student_val"])
    # the sweeper maximised the job's VALIDATION accuracy, and the summary says which won
    assert study.best_value == pytest.approx(best["student_val"])
    assert f"best by validation accuracy: T={best['T']:.4g}, alpha={best['alpha']:.4g}" in r.stdout
    for t in study.trials:
        assert 1 <= t.params["T"] <= 20 and 0 <= t.params["alpha"] <= 1
    # the same search again continues the study; this time with both trackers on
    r = cli(
        *args[:-1],
        f"hydra.sweep.dir={tmp_path / 'sweep2'}",
        "hydra.sweeper.n_trials=1",
        "logger=many_loggers",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert len(optuna.load_study(study_name="s", storage=f"sqlite:///{db}").trials) == 4
    _check_trackers(tmp_path)


def _check_trackers(root: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (run_dir,) = {p.parent for p in (root / "outputs/tensorboard").rglob("events.out.tfevents.*")}
    acc = EventAccumulator(str(run_dir))  # the run's event files (hparams write a second one)
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    # stages loaded from the store replay their stored epochs; the student is live
    assert {"teacher/val_acc", "baseline/loss_hard", "student/loss_soft", "student/lr"} <= tags
    assert "final/student.val_acc" in tags and "final/world_size" in tags
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{root / 'outputs' / 'mlruns' / 'mlflow.db'}")
    (run,) = mlflow.search_runs(experiment_names=["kdrun"], output_format="list")
    mlflow.set_tracking_uri(None)
    assert run.info.status == "FINISHED" and run.data.params["experiment"] == "smoke"
    assert run.data.metrics["final/student.val_acc"] > 0.5
    client = mlflow.tracking.MlflowClient(f"sqlite:///{root / 'outputs' / 'mlruns' / 'mlflow.db'}")
    arts = [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")]
    assert arts == ["checkpoints/student.pt"]
