"""Kinds of experiment a job can run, by name; ``distill`` (teacher -> baseline -> student) is
the default. Another kind (dataset condensation, say) registers beside it and is chosen by
the config key ``kind``, so run_job never branches on what an experiment does."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from kdrun.errors import ConfigError

# (cfg, run_dir, reporter, should_stop) -> metrics (with "_history": rows for history.csv)
Runner = Callable[..., dict[str, Any]]
KINDS: dict[str, Runner] = {}


def register_kind(name: str) -> Callable[[Runner], Runner]:
    def deco(fn: Runner) -> Runner:
        KINDS[name] = fn
        return fn

    return deco


def runner_for(cfg: DictConfig) -> Runner:
    name = cfg.get("kind", "distill")
    if name not in KINDS:
        raise ConfigError(f"unknown kind '{name}'; choose one of: {', '.join(sorted(KINDS))}")
    return KINDS[name]


def run_kind(cfg: DictConfig, run_dir: Path, reporter, should_stop=None) -> dict[str, Any]:
    return runner_for(cfg)(cfg, run_dir, reporter, should_stop=should_stop)
