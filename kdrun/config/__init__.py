"""The typed config: the schema Hydra merges conf/ onto, and its semantic checks."""

from kdrun.config.checks import unknown_keys, validate_config
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

__all__ = [
    "AnalysisConfig",
    "DatasetConfig",
    "KdrunConfig",
    "ModelConfig",
    "RuntimeConfig",
    "TrainConfig",
    "config_dir",
    "register_configs",
    "to_container",
    "unknown_keys",
    "validate_config",
]
