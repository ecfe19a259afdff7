"""Semantic checks of a composed config, run before anything is trained or written.

Method-specific checks live with the methods (``Distiller.check_config``); the experiments
layer runs both (``kdrun.experiments.validate``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from kdrun.config.options import check_options
from kdrun.config.schema import KdrunConfig
from kdrun.data import DATASETS, parse_size
from kdrun.data.bundle import unlabelled_mode
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
    _check(  # the lr would still be rising when training ends (50 of 2 epochs: lr / 25)
        t.warmup_epochs == 0 or t.warmup_epochs < t.epochs,
        f"{prefix}.warmup_epochs={t.warmup_epochs} is not below {prefix}.epochs={t.epochs}: "
        f"the lr would never reach {prefix}.lr; use fewer warmup epochs, e.g. "
        f"{prefix}.warmup_epochs={max(0, min(t.epochs // 10, t.epochs - 1))}",
    )


# Sections whose keys something else checks: method.* its Options, logger.* each tracker,
# *.options the plugin's registered dataclass (kdrun.config.options).
# Sections checked by their owner, not by the schema: method.* by the method's Options,
# logger.* by each tracker, a model's kwargs by the model they are passed to, a plugin's
# options by the dataclass it registered.
_OWN_CHECKS = (
    "method",
    "logger",
    "teacher.kwargs",
    "student.kwargs",
    "teacher.options",
    "student.options",
    "dataset.options",
)


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
                and prefix + k not in _OWN_CHECKS
            ):
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
        for rate in ("dropout", "input_dropout"):
            _check(0 <= m[rate] < 1, f"{role}.{rate} must be in [0, 1) (got {m[rate]})")
        _check(
            not m.input_dropout or m.name == "mlp",
            f"{role}.input_dropout applies to the mlp model only (got {role}={m.name}); "
            f"drop it or set {role}=mlp",
        )
        _check(m.finetune_epochs >= 0, f"{role}.finetune_epochs must be >= 0")
        _check_train(f"{role}.train", m.train)
    _check_checkpoints(cfg)


def _check_checkpoints(cfg: DictConfig) -> None:
    """teacher.checkpoint must be a file; the student never loads one (a value there would
    be ignored: the student is what the run trains)."""
    _check(
        not cfg.student.get("checkpoint"),
        f"student.checkpoint={cfg.student.get('checkpoint')}: only the teacher loads weights "
        f"from a file (teacher.checkpoint=PATH); the student is trained by the run; remove "
        f"student.checkpoint",
    )
    ck = cfg.teacher.get("checkpoint")
    if not ck:
        return
    path = Path(str(ck)).expanduser()
    _check(
        not path.is_dir(),
        f"teacher.checkpoint={path} is a directory; give the file inside it, e.g. "
        f"teacher.checkpoint={path / 'checkpoints' / 'teacher.pt'}",
    )
    _check(
        path.is_file(),
        f"teacher.checkpoint={path} does not exist; give the path of a teacher.pt from a "
        f"kdrun run directory",
    )
    # The file's first bytes, read here so that a wrong file is refused before the run
    # directory exists (kdrun.store.atomic.load_weights checks the same when it loads).
    _check(
        _head(path, 2) == b"PK" or _head(path, 1) == b"\x80",
        f"teacher.checkpoint={path} is not a torch file (neither a zip archive nor a pickle); "
        f"give the path of a teacher.pt from a kdrun run directory",
    )


def _head(path: Path, n: int) -> bytes:
    """The first ``n`` bytes of a file (b"" if it cannot be read: the loader says why)."""
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except OSError:
        return b""


def _check_tensors_file(ds: DictConfig) -> None:
    """dataset=tensors: an existing dataset.path must be a .npz (a zip archive), checked here
    so that a wrong file is refused before the run directory exists (the loader checks it
    again, kdrun.data.external.load_tensors)."""
    path = Path(str(ds.get("path") or "")).expanduser()
    if ds.name != "tensors" or not ds.get("path") or not path.is_file():
        return  # no path / a missing one: the loader's own error names the fix
    _check(
        _head(path, 4) in (b"PK\x03\x04", b"PK\x05\x06"),
        f"dataset.path={path} is not a .npz file (not a zip archive); write one with "
        f"numpy.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)",
    )


def _check_dataset(ds: DictConfig) -> None:
    _check_tensors_file(ds)
    _check(
        0 < ds.train_fraction <= 1,
        f"dataset.train_fraction must be in (0, 1] (got {ds.train_fraction})",
    )
    _check(
        unlabelled_mode(ds.get("unlabelled_transfer", "off")) in ("on", "off", "auto"),
        f"unknown dataset.unlabelled_transfer '{ds.unlabelled_transfer}'; choose one of: "
        f"auto, on, off",
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
    _check_image_size(ds.get("image_size"))
    _check(ds.val_size >= 0, f"dataset.val_size must be >= 0 (got {ds.val_size:g})")
    _check(ds.val_max >= 0, f"dataset.val_max must be >= 0 (got {ds.val_max}); 0 = no cap")
    _check(
        not (ds.omit_classes and ds.keep_classes),
        "set either dataset.omit_classes or dataset.keep_classes, not both",
    )


def _check_image_size(size: Any) -> None:
    """None (the images' own size), N or [H, W], with positive sizes."""
    if size is None:
        return
    sizes = list(size) if OmegaConf.is_list(size) or isinstance(size, (list, tuple)) else [size]
    ok = len(sizes) in (1, 2) and all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in sizes
    )
    _check(
        ok,
        f"dataset.image_size={size} is not a size: give N or [H, W] with positive integers "
        f"(e.g. dataset.image_size=32), or dataset.image_size=null for the images' own size",
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
        str(cfg.store_dir).strip() != "",
        "store_dir is empty (the store would land in the current directory); give a "
        "directory, e.g. store_dir=outputs/store",
    )
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
    check_options(cfg)
    _check_runtime(cfg.runtime)
    _check_analysis(cfg.analysis)
