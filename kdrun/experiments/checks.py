"""The whole check of a job's config: the schema-level checks plus the method's own."""

from __future__ import annotations

from omegaconf import DictConfig

from kdrun.config import validate_config
from kdrun.data import DATASETS
from kdrun.engine.device import current_hydra_config
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
    _check_search_objective(cfg, task)


def _check_search_objective(cfg: DictConfig, task) -> None:
    """In an Optuna search, the objective must be the task's own validation metric in its own
    direction: an lm trial asked for val_acc would run to the end and then fail."""
    hc = current_hydra_config()
    if hc is None or "optuna" not in str(hc.sweeper.get("_target_", "")):
        return
    sel = task.selection
    want = "maximize" if sel.higher_is_better else "minimize"
    direction = str(hc.sweeper.get("direction", want))
    if str(cfg.optimized_metric).rsplit(".", 1)[-1] == sel.name and direction == want:
        return
    hint = " (or hparams_search=t_alpha_optuna_lm)" if task.name == "lm" else ""
    raise ConfigError(
        f"optimized_metric={cfg.optimized_metric} ({direction}): task {task.name} selects on "
        f"{sel.name}, {'higher' if sel.higher_is_better else 'lower'} is better; use "
        f"optimized_metric=student.{sel.name} hydra.sweeper.direction={want}{hint}"
    )
