"""The whole check of a job's config: the schema-level checks plus the method's own."""

from __future__ import annotations

from omegaconf import DictConfig

from kdrun.config import validate_config
from kdrun.data import DATASETS
from kdrun.data.bundle import unlabelled_mode
from kdrun.data.views import LOW_RES, OWN, check_view
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
    _resolve_unlabelled(cfg, methods[name])
    check_views(cfg, task, methods[name])
    methods[name].check_config(cfg)
    _check_search_objective(cfg, task)


def _resolve_unlabelled(cfg: DictConfig, method) -> None:
    """dataset.unlabelled_transfer gives images labelled -100: only a method whose labels go
    through hard_ce alone can learn from them (Distiller.accepts_unlabelled). ``auto`` becomes
    on or off for this method, ``on`` with a method that cannot is refused; the value used is
    written back, so the store keys and metrics.json hold it."""
    ds = cfg.dataset
    mode = unlabelled_mode(ds.get("unlabelled_transfer", "off"))
    kind = cfg.get("kind", "distill")
    if kind != "distill" and mode == "on" and ds.train_fraction < 1:
        raise ConfigError(
            f"dataset.unlabelled_transfer=on is for distillation jobs; kind={kind} does not "
            f"read the transfer set's unlabelled images: remove it (or set it to off)"
        )
    if mode == "auto":
        mode = "on" if method.accepts_unlabelled and kind == "distill" else "off"
    elif mode == "on" and ds.train_fraction < 1 and not method.accepts_unlabelled:
        raise ConfigError(
            f"method={method.name} uses the labels beyond its cross-entropy and cannot learn "
            f"from the unlabelled images of dataset.unlabelled_transfer; use "
            f"dataset.unlabelled_transfer=auto or off (or method=kd)"
        )
    ds.unlabelled_transfer = mode


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


def _view_names(cfg: DictConfig, task) -> list[str]:
    """The views dataset= offers, as far as known before loading it (kdrun.data.views)."""
    spec = DATASETS[cfg.dataset.name]
    names = list(spec.views) or [OWN]
    return names + ([LOW_RES] if task.inputs == "images" and not spec.views else [])


def check_views(cfg: DictConfig, task, method) -> None:
    """Unknown views, and methods or settings that need the teacher to read the student's
    batch when the two read different views: refused before anything trains."""
    names = _view_names(cfg, task)
    chosen = {}
    for role in ("teacher", "student"):
        view = cfg[role].get("view")
        if view is not None:
            check_view(str(view), names, role, cfg.dataset.name)
        chosen[role] = names[0] if view is None else str(view)
    if chosen["teacher"] == chosen["student"] or not method.needs_teacher:
        return
    pair = f"teacher.view={chosen['teacher']} and student.view={chosen['student']} differ"
    if not method.accepts_views(cfg):
        raise ConfigError(
            f"method={cfg.method.name} needs the teacher's forward pass on the student's own "
            f"inputs (features, or models trained on them), but {pair}; give both the same "
            f"view, or use a method on logits alone (kd, gd, dkd, dist, nkd, ctkd)"
        )
    augment = cfg.student.train.get("augment")
    if augment or (augment is None and cfg.dataset.augment):
        raise ConfigError(
            f"the student's batches are augmented, which the teacher's outputs on its own view "
            f"cannot follow, and {pair}; set dataset.augment=false student.train.augment=false"
        )
    for what, on in (
        ("dataset.omit_classes", bool(cfg.dataset.omit_classes)),
        ("analysis.dark_knowledge", bool(cfg.analysis.dark_knowledge)),
    ):
        if on:
            raise ConfigError(
                f"{what} analyses the teacher on the student's inputs, but {pair}; "
                f"give both the same view or drop {what}"
            )
