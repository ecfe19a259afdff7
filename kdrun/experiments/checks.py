"""The whole check of a job's config: the schema-level checks plus the method's own."""

from __future__ import annotations

from omegaconf import DictConfig

from kdrun.config import validate_config
from kdrun.data import DATASETS
from kdrun.errors import ConfigError
from kdrun.experiments.kinds import check_kind
from kdrun.tasks import task_named


def validate(cfg: DictConfig) -> None:
    """Every semantic check that must pass before anything is trained or written."""
    validate_config(cfg)
    check_kind(cfg)
    task = task_named(DATASETS[cfg.dataset.name].task)
    methods, name = task.methods, cfg.method.name
    if name not in methods:
        raise ConfigError(
            f"unknown method '{name}'; choose one of: {', '.join(sorted(methods))} (the "
            f"methods of task {task.name}, which dataset={cfg.dataset.name} belongs to)"
        )
    methods[name].check_config(cfg)
