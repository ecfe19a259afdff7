"""What the run table shows about one trained model (a stage of a job)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# the stored meta of a model that is not one of its test scores
META_FIELDS = ("model", "params", "best_epoch", "train_seconds", "history", "source", "threads")


@dataclass
class StageReport:
    """What the report shows about one trained model: ``scores`` are the task's test
    metrics, ``last_<headline>`` (the last epoch's) and the validation metric it selected on."""

    model: str
    params: int
    scores: dict[str, Any]
    best_epoch: int
    train_seconds: float
    from_cache: bool = False
    source: str = "trained"  # trained | store | pretrained | checkpoint | finetuned

    @property
    def test_acc(self) -> float | None:
        return self.scores.get("test_acc")

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "params": self.params,
            **self.scores,
            "best_epoch": self.best_epoch,
            "train_seconds": self.train_seconds,
            "from_cache": self.from_cache,
            "source": self.source,
        }
