"""TensorBoard back end: event files under ``save_dir/<run name>`` (``tensorboard --logdir``).

Scalars are ``<stage>/<field>`` per epoch (step = epoch) and ``final/<metric>``; the resolved
config is a text summary and an hparams entry, so runs can be compared in the HParams tab.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kdrun.trackers.base import epoch_scalars, register_tracker


@register_tracker("tensorboard", extra="tensorboard")
class TensorBoardTracker:
    def __init__(self, save_dir: str = "outputs/tensorboard", flush_secs: int = 30) -> None:
        # torch's writer needs the tensorboard package: import it here so a missing extra is
        # the ImportError make_trackers turns into one line, not an import-time failure.
        from torch.utils.tensorboard import SummaryWriter

        self._writer_cls = SummaryWriter
        self.save_dir = Path(save_dir)
        self.flush_secs = flush_secs
        self.writer: Any = None
        self.params: dict[str, str] = {}

    def start(self, run_name: str, params: Mapping[str, str], tags: Mapping[str, str]) -> None:
        self.log_dir = self.save_dir / run_name
        self.writer = self._writer_cls(str(self.log_dir), flush_secs=self.flush_secs)
        self.params = dict(params)
        text = "\n".join(f"    {k}: {v}" for k, v in sorted(params.items()))
        self.writer.add_text("config", text)
        for k, v in tags.items():
            self.writer.add_text(f"tags/{k}", str(v))

    def log_epoch(self, stage: str, row: Mapping[str, Any]) -> None:
        step = int(row.get("epoch", 0))
        for k, v in epoch_scalars(row).items():
            self.writer.add_scalar(f"{stage}/{k}", v, step)

    def log_final(self, metrics: Mapping[str, float]) -> None:
        for k, v in metrics.items():
            self.writer.add_scalar(f"final/{k}", v, 0)
        # hparams: the swept knobs against the headline numbers (HParams tab)
        hp = {k: self.params[k] for k in ("T", "alpha", "seed", "method.name") if k in self.params}
        head = {
            f"hparam/{k}": v
            for k, v in metrics.items()
            if k in ("student.test_acc", "student.val_acc", "kd_gain")
        }
        if hp and head:
            self.writer.add_hparams(hp, head, run_name=".")

    def log_artifact(self, path: Path, folder: str) -> None:
        """TensorBoard keeps no files; the checkpoint path is recorded as text."""
        self.writer.add_text(f"artifacts/{folder}/{path.name}", str(path.resolve()))

    def close(self, status: str) -> None:
        if self.writer is not None:
            self.writer.add_text("status", status)
            self.writer.close()
            self.writer = None
