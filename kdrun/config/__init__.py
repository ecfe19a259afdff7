"""The typed config: the schema Hydra merges conf/ onto, and its semantic checks.

The checks load on first use (PEP 562): they need the registries, which import torch, and the
schema alone serves `kdrun --help` and a typo's one-line error without it."""

from __future__ import annotations

import importlib
from typing import Any

from kdrun.config.condense import CondenseConfig
from kdrun.config.schema import (
    AnalysisConfig,
    DatasetConfig,
    KdrunConfig,
    ModelConfig,
    RuntimeConfig,
    TrainConfig,
    config_dir,
    register_configs,
    to_container,
)

_CHECKS = ("unknown_keys", "validate_config", "model_options", "dataset_options")
_MODULE = {"model_options": "kdrun.config.options", "dataset_options": "kdrun.config.options"}

__all__ = [
    "AnalysisConfig",
    "CondenseConfig",
    "DatasetConfig",
    "KdrunConfig",
    "ModelConfig",
    "RuntimeConfig",
    "TrainConfig",
    "config_dir",
    "dataset_options",
    "model_options",
    "register_configs",
    "to_container",
    "unknown_keys",
    "validate_config",
]


def __getattr__(name: str) -> Any:
    if name not in _CHECKS:
        raise AttributeError(f"module 'kdrun.config' has no attribute {name!r}")
    return getattr(importlib.import_module(_MODULE.get(name, "kdrun.config.checks")), name)
