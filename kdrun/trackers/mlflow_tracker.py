"""MLflow back end: a local SQLite tracking store with file artifacts, no server needed.

``tracking_uri`` defaults to ``sqlite:///<save_dir>/mlflow.db`` (MLflow 3 refuses the old
``./mlruns`` file store unless told otherwise) and artifacts go to ``<save_dir>/artifacts``;
``mlflow ui --backend-store-uri sqlite:///outputs/mlruns/mlflow.db`` browses them and
``mlflow.search_runs`` finds them. Per-epoch rows are metrics ``<stage>/<field>`` with
step = epoch; the resolved config is the run's parameters (dotted keys).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kdrun.trackers.base import epoch_scalars, register_tracker

_PARAM_MAX = 6000  # MLflow's limit on a parameter value's length
_BATCH = 100  # log_batch accepts at most 100 parameters per call


@register_tracker("mlflow", extra="mlflow")
class MlflowTracker:
    def __init__(
        self,
        save_dir: str = "outputs/mlruns",
        experiment_name: str = "kdrun",
        tracking_uri: str | None = None,
    ) -> None:
        from mlflow.entities import Metric, Param  # the optional extra: see make_trackers
        from mlflow.tracking import MlflowClient

        self._metric, self._param = Metric, Param
        root = Path(save_dir).resolve()
        self.artifact_location = (root / "artifacts").as_uri()
        if tracking_uri is None:
            root.mkdir(parents=True, exist_ok=True)
            tracking_uri = f"sqlite:///{root / 'mlflow.db'}"
        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.experiment_name = experiment_name
        self.run_id: str | None = None

    def _experiment_id(self) -> str:
        exp = self.client.get_experiment_by_name(self.experiment_name)
        if exp is not None:
            return exp.experiment_id
        return self.client.create_experiment(
            self.experiment_name, artifact_location=self.artifact_location
        )

    def start(self, run_name: str, params: Mapping[str, str], tags: Mapping[str, str]) -> None:
        run = self.client.create_run(self._experiment_id(), run_name=run_name, tags=dict(tags))
        self.run_id = run.info.run_id
        items = [self._param(k[:250], v[:_PARAM_MAX]) for k, v in sorted(params.items())]
        for i in range(0, len(items), _BATCH):
            self.client.log_batch(self.run_id, params=items[i : i + _BATCH])

    def _metrics(self, values: Mapping[str, float], prefix: str, step: int) -> None:
        now = int(time.time() * 1000)
        ms = [self._metric(f"{prefix}{k}", v, now, step) for k, v in values.items()]
        for i in range(0, len(ms), 1000):
            self.client.log_batch(self.run_id, metrics=ms[i : i + 1000])

    def log_epoch(self, stage: str, row: Mapping[str, Any]) -> None:
        self._metrics(epoch_scalars(row), f"{stage}/", int(row.get("epoch", 0)))

    def log_final(self, metrics: Mapping[str, float]) -> None:
        self._metrics(metrics, "final/", 0)

    def log_artifact(self, path: Path, folder: str) -> None:
        self.client.log_artifact(self.run_id, str(path), folder)

    def close(self, status: str) -> None:
        if self.run_id is not None:
            state = {"completed": "FINISHED", "interrupted": "KILLED"}.get(status, "FAILED")
            self.client.set_terminated(self.run_id, state)
            self.run_id = None
