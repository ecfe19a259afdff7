"""Trackers: what a job logs is readable back by TensorBoard's and MLflow's own readers."""

from __future__ import annotations

import pytest
import torch

from kdrun.errors import ConfigError
from kdrun.trackers import Trackers, make_trackers
from kdrun.trackers.base import final_metrics, flatten

CONFIG = {
    "T": 4.0,
    "alpha": 0.9,
    "seed": 0,
    "method": {"name": "kd"},
    "dataset": {"name": "digits"},
}
ROWS = [
    (
        "teacher",
        {
            "stage": "teacher",
            "epoch": 1,
            "loss": 1.5,
            "loss_hard": 1.5,
            "loss_soft": None,
            "train_acc": 0.5,
            "val_acc": 0.6,
            "lr": 1e-3,
        },
    ),
    (
        "student",
        {
            "stage": "student",
            "epoch": 1,
            "loss": 0.9,
            "loss_soft": 0.7,
            "loss_hard": 0.2,
            "train_acc": 0.7,
            "val_acc": 0.75,
            "lr": 1e-3,
        },
    ),
    (
        "student",
        {
            "stage": "student",
            "epoch": 2,
            "loss": 0.5,
            "loss_soft": 0.4,
            "loss_hard": 0.1,
            "train_acc": 0.8,
            "val_acc": 0.85,
            "lr": 5e-4,
        },
    ),
]
METRICS = {
    "student": {"test_acc": 0.84, "val_acc": 0.85, "per_class_acc": [0.8, 0.9]},
    "teacher": {"test_acc": 0.9},
    "kd_gain": 0.02,
    "world_size": 1,
    "config": {"T": 4.0},
    "versions": {"torch": "2"},
    "_history": [],
}


def _feed(trackers: Trackers, ckpt) -> None:
    trackers.start("smoke-run", CONFIG, {"status": "running"})
    for stage, row in ROWS:
        trackers.log_epoch(stage, row)
    trackers.log_final(METRICS)
    trackers.log_artifact(ckpt)
    trackers.close("completed")


def test_final_metrics_keep_numbers_not_lists_config_or_history():
    f = final_metrics(METRICS)
    assert f == {
        "student.test_acc": 0.84,
        "student.val_acc": 0.85,
        "teacher.test_acc": 0.9,
        "kd_gain": 0.02,
        "world_size": 1.0,
    }
    assert flatten({"a": {"b": [1, 2]}}) == {"a.b": [1, 2]}


def test_no_logger_is_a_no_op_and_unknown_is_one_line(tmp_path):
    t = make_trackers({})
    assert not t
    _feed(t, tmp_path / "absent.pt")  # nothing configured: nothing happens, nothing fails
    assert not make_trackers({"tensorboard": {}}, enabled=False)  # ranks other than 0
    with pytest.raises(ConfigError, match="logger.wandb is unknown; choose from mlflow, tens"):
        make_trackers({"wandb": {}})
    with pytest.raises(ConfigError, match="logger.mlflow: .*conf/logger/mlflow.yaml"):
        make_trackers({"mlflow": {"save_dirr": "x"}})


def test_a_failing_backend_is_dropped_not_fatal(tmp_path, caplog):
    class Broken:
        def start(self, *a):
            raise OSError("disk full")

    t = Trackers([("broken", Broken())])
    _feed(t, tmp_path / "absent.pt")
    assert not t.backends and "logger broken failed to start (disk full)" in caplog.text


def test_tensorboard_event_files_read_back(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ckpt = tmp_path / "student.pt"
    torch.save({"w": torch.zeros(1)}, ckpt)
    _feed(make_trackers({"tensorboard": {"save_dir": str(tmp_path / "tb")}}), ckpt)
    acc = EventAccumulator(str(tmp_path / "tb" / "smoke-run"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert {"teacher/val_acc", "student/loss_soft", "student/lr", "final/kd_gain"} <= set(tags)
    assert "teacher/loss_soft" not in tags  # None parts are not numbers
    vals = [(e.step, e.value) for e in acc.Scalars("student/val_acc")]
    assert vals == [(1, pytest.approx(0.75)), (2, pytest.approx(0.85))]
    assert acc.Scalars("final/student.test_acc")[0].value == pytest.approx(0.84)
    assert any(t.startswith("config") for t in acc.Tags()["tensors"])


@pytest.mark.slow  # MLflow creates its SQLite schema (~50 migrations) on first use
def test_mlflow_runs_read_back_with_search_runs(tmp_path):
    mlflow = pytest.importorskip("mlflow")
    ckpt = tmp_path / "student.pt"
    torch.save({"w": torch.zeros(1)}, ckpt)
    save = tmp_path / "mlruns"
    _feed(make_trackers({"mlflow": {"save_dir": str(save)}}), ckpt)
    uri = f"sqlite:///{save / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(
        experiment_names=["kdrun"], output_format="list", filter_string="params.T = '4.0'"
    )
    mlflow.set_tracking_uri(None)
    assert len(runs) == 1
    r = runs[0]
    assert r.info.status == "FINISHED" and r.info.run_name == "smoke-run"
    assert r.data.params["method.name"] == "kd" and r.data.params["dataset.name"] == "digits"
    assert r.data.metrics["final/student.test_acc"] == pytest.approx(0.84)
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    hist = client.get_metric_history(r.info.run_id, "student/val_acc")
    assert sorted((m.step, round(m.value, 6)) for m in hist) == [(1, 0.75), (2, 0.85)]
    arts = [a.path for a in client.list_artifacts(r.info.run_id, "checkpoints")]
    assert arts == ["checkpoints/student.pt"]
