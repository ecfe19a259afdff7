"""The whole check of a job's config: the schema-level checks plus the method's own."""

from __future__ import annotations

from omegaconf import DictConfig

from kdrun.config import validate_config
from kdrun.data import DATASETS
from kdrun.errors import ConfigError
from kdrun.experiments.hydra_job import current_hydra_config
from kdrun.experiments.kinds import check_kind
from kdrun.models import MODEL_INPUTS
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
    _check_model_inputs(cfg, task)
    methods[name].check_config(cfg)
    _check_unlabelled(cfg, methods[name])
    _check_search_objective(cfg, task)


def _check_unlabelled(cfg: DictConfig, method) -> None:
    """dataset.unlabelled_transfer gives images labelled -100: only a method whose labels go
    through hard_ce alone can learn from them (Distiller.accepts_unlabelled)."""
    ds = cfg.dataset
    if not ds.get("unlabelled_transfer") or ds.train_fraction >= 1 or method.accepts_unlabelled:
        return
    raise ConfigError(
        f"method={method.name} uses the labels beyond its cross-entropy and cannot learn from "
        f"the unlabelled images of dataset.unlabelled_transfer; add "
        f"dataset.unlabelled_transfer=false (or use method=kd)"
    )


_EXAMPLE = {"images": "cnn", "tokens": "gpt", "triples": "rotate"}


def _check_model_inputs(cfg: DictConfig, task) -> None:
    """A language model on images or an image model on text fails deep inside its first
    forward (after the teacher has trained): refuse it here, naming a model that fits."""
    for role in ("teacher", "student"):
        model = str(cfg[role].name)
        reads = MODEL_INPUTS.get(model)
        if reads is None or reads == task.inputs:
            continue
        raise ConfigError(
            f"{role}={model} reads {reads}, but dataset={cfg.dataset.name} gives {task.inputs} "
            f"(task {task.name}); use a model for {task.inputs}, e.g. {role}="
            f"{_EXAMPLE[task.inputs]} (kdrun list shows each model's inputs)"
        )


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
