"""Semantic checks of a composed config, run before anything is trained or written.

Method-specific checks live with the methods (``Distiller.check_config``); the experiments
layer runs both (``kdrun.experiments.validate``).
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from kdrun.config.schema import KdrunConfig
from kdrun.data import DATASETS, parse_size
from kdrun.errors import ConfigError
from kdrun.models import MODELS

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "step")
AMP_MODES = ("auto", "bf16", "bf16_force", "fp16", "off")
DATA_PLACEMENTS = ("auto", "device", "host")


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def _check_train(prefix: str, t: Any) -> None:
    _check(t.epochs >= 1, f"{prefix}.epochs must be >= 1 (got {t.epochs})")
    _check(t.batch_size >= 1, f"{prefix}.batch_size must be >= 1 (got {t.batch_size})")
    _check(t.lr > 0, f"{prefix}.lr must be > 0 (got {t.lr})")
    _check(t.weight_decay >= 0, f"{prefix}.weight_decay must be >= 0 (got {t.weight_decay})")
    _check(
        t.optimizer in OPTIMIZERS,
        f"unknown {prefix}.optimizer '{t.optimizer}'; choose one of: {', '.join(OPTIMIZERS)}",
    )
    _check(
        t.schedule in SCHEDULES,
        f"unknown {prefix}.schedule '{t.schedule}'; choose one of: {', '.join(SCHEDULES)}",
    )
    _check(t.warmup_epochs >= 0, f"{prefix}.warmup_epochs must be >= 0 (got {t.warmup_epochs})")


def unknown_keys(cfg: DictConfig) -> list[str]:
    """Keys absent from the schema: ``+key=value`` can add them past OmegaConf's struct check."""
    ref = OmegaConf.to_container(OmegaConf.structured(KdrunConfig))
    given = OmegaConf.to_container(cfg, resolve=False)
    out: list[str] = []

    def walk(node: dict, schema: dict, prefix: str) -> None:
        custom = prefix in ("teacher.", "student.") and node.get("name") == "custom"
        for k, v in node.items():
            if k not in schema and not custom:  # a custom model's own constructor arguments
                out.append(prefix + str(k))
            elif (
                isinstance(v, dict)
                and isinstance(schema[k], dict)
                and prefix + k not in ("method", "logger")
            ):  # method.* is checked by its own Options, logger.* by each tracker
                walk(v, schema[k], f"{prefix}{k}.")

    walk(given, ref, "")
    return out


def _check_models(cfg: DictConfig) -> None:
    for role in ("teacher", "student"):
        m = cfg[role]
        _check(
            m.name in MODELS,
            f"unknown {role} model '{m.name}'; choose one of: {', '.join(sorted(MODELS))}",
        )
        _check(0 <= m.dropout < 1, f"{role}.dropout must be in [0, 1) (got {m.dropout})")
        _check(m.finetune_epochs >= 0, f"{role}.finetune_epochs must be >= 0")
        _check_train(f"{role}.train", m.train)


def _check_dataset(ds: DictConfig) -> None:
    _check(
        0 < ds.train_fraction <= 1,
        f"dataset.train_fraction must be in (0, 1] (got {ds.train_fraction})",
    )
    _check(
        ds.on_bad_image in ("skip", "error"),
        f"unknown dataset.on_bad_image '{ds.on_bad_image}'; choose one of: skip, error",
    )
    n_cls = DATASETS[ds.name].num_classes
    if DATASETS[ds.name].task != "classify":  # a text corpus: no class options apply
        _check(
            not (ds.omit_classes or ds.keep_classes),
            f"dataset {ds.name} has no classes; remove dataset.omit_classes/keep_classes",
        )
        return
    if not n_cls:  # the user's own data: its classes are counted when it is loaded
        n_cls = 1 << 30
    bad = [c for c in [*ds.omit_classes, *ds.keep_classes] if not 0 <= c < n_cls]
    _check(
        not bad,
        f"class(es) {bad} out of range for {ds.name}: classes are 0..{n_cls - 1}; fix "
        f"dataset.omit_classes / dataset.keep_classes",
    )
    _check(
        len(set(ds.omit_classes)) < n_cls,
        "dataset.omit_classes omits every class; the student would have no data; omit fewer",
    )
    _check(ds.limit_train >= 0 and ds.limit_test >= 0, "dataset.limit_* must be >= 0")
    _check(ds.val_size >= 0, f"dataset.val_size must be >= 0 (got {ds.val_size:g})")
    _check(ds.val_max >= 0, f"dataset.val_max must be >= 0 (got {ds.val_max}); 0 = no cap")
    _check(
        not (ds.omit_classes and ds.keep_classes),
        "set either dataset.omit_classes or dataset.keep_classes, not both",
    )


def _check_runtime(rt: DictConfig) -> None:
    _check(
        rt.amp in AMP_MODES,
        f"unknown runtime.amp '{rt.amp}'; choose one of: {', '.join(AMP_MODES)}",
    )
    _check(
        rt.data_on_device in DATA_PLACEMENTS,
        f"unknown runtime.data_on_device '{rt.data_on_device}'; choose one of: "
        f"{', '.join(DATA_PLACEMENTS)}",
    )
    _check(
        rt.num_threads in ("auto", "adaptive")
        or (isinstance(rt.num_threads, int) and rt.num_threads >= 0),
        f"runtime.num_threads must be auto, adaptive or a count >= 0 (got {rt.num_threads!r}); "
        "try runtime.num_threads=auto",
    )
    _check(rt.eval_batch_size >= 1, "runtime.eval_batch_size must be >= 1")
    parse_size(rt.max_data_memory)
    _check(
        rt.dist_backend in ("auto", "nccl", "gloo"),
        f"unknown runtime.dist_backend '{rt.dist_backend}'; choose one of: auto, nccl, gloo",
    )
    _check(
        rt.sync_bn in ("auto", "on", "off"),
        f"unknown runtime.sync_bn '{rt.sync_bn}'; choose one of: auto, on, off",
    )
    _check(rt.dist_timeout_s >= 1, "runtime.dist_timeout_s must be >= 1 (seconds)")
    _check(
        rt.progress in ("auto", "on", "off"),
        f"unknown runtime.progress '{rt.progress}'; choose one of: auto, on, off",
    )
    _check(
        rt.fused_optimizer in ("auto", True, False),
        f"unknown runtime.fused_optimizer '{rt.fused_optimizer}'; choose one of: auto, true, false",
    )
    _check(
        rt.parallel_baseline in ("auto", "on", "off"),
        f"unknown runtime.parallel_baseline '{rt.parallel_baseline}'; choose one of: auto, on, off",
    )


def _check_analysis(an: DictConfig) -> None:
    _check(
        an.bias_prior in ("teacher", "uniform"),
        f"unknown analysis.bias_prior '{an.bias_prior}'; choose one of: teacher, uniform",
    )
    _check(
        len(an.temperatures) > 0 and all(t > 0 for t in an.temperatures),
        f"analysis.temperatures must be positive numbers (got {list(an.temperatures)})",
    )
    _check(an.examples >= 0, f"analysis.examples must be >= 0 (got {an.examples})")
    _check(an.full_data_epochs >= 0, "analysis.full_data_epochs must be >= 0 (0 = student's)")


def validate_config(cfg: DictConfig) -> None:
    """Semantic checks that must pass before anything is trained or written (the method's
    own options are checked by the method: kdrun.experiments.validate runs both)."""
    extra = unknown_keys(cfg)
    _check(
        not extra,
        f"unknown config key '{extra[0] if extra else ''}'; remove it (`kdrun --cfg job` lists "
        f"every key)",
    )
    _check(cfg.T > 0, f"T must be > 0 (got {cfg.T}); try T=4")
    _check(
        "test" not in str(cfg.optimized_metric),
        f"optimized_metric={cfg.optimized_metric}: a search selects on validation, never on the "
        f"test split; use student.val_acc",
    )
    _check(0 <= cfg.alpha <= 1, f"alpha must be in [0, 1] (got {cfg.alpha}); try alpha=0.9")
    _check(
        cfg.dataset.name in DATASETS,
        f"unknown dataset '{cfg.dataset.name}'; choose one of: {', '.join(sorted(DATASETS))}",
    )
    _check_models(cfg)
    _check_dataset(cfg.dataset)
    _check_runtime(cfg.runtime)
    _check_analysis(cfg.analysis)
