"""The whole check of a job's config: the schema-level checks plus the method's own."""

from __future__ import annotations

from omegaconf import DictConfig

from kdrun.config import validate_config
from kdrun.errors import ConfigError
from kdrun.methods import METHODS


def validate(cfg: DictConfig) -> None:
    """Every semantic check that must pass before anything is trained or written."""
    validate_config(cfg)
    name = cfg.method.name
    if name not in METHODS:
        raise ConfigError(f"unknown method '{name}'; choose one of: {', '.join(sorted(METHODS))}")
    METHODS[name].check_config(cfg)
