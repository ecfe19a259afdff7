"""Typed configuration schema and the semantic checks that run before any training.

The YAML files under ``conf/`` are merged onto these dataclasses, so a misspelled key or a
value of the wrong type is rejected by OmegaConf with the key named.  ``validate`` adds the
checks a type cannot express (``T > 0``, known model names, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from kdrun.errors import ConfigError


def config_dir() -> str:
    """Absolute path of the config tree: ``conf/`` in a checkout, ``kdrun/conf`` in a wheel."""
    here = Path(__file__).resolve().parent
    for cand in (here / "conf", here.parent / "conf"):
        if (cand / "config.yaml").is_file():
            return str(cand)
    raise ConfigError("kdrun's config directory was not found; reinstall kdrun")


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "adam"  # sgd | adam | adamw
    lr: float = 1e-3
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    schedule: str = "cosine"  # constant | cosine | step
    milestones: list[int] = field(default_factory=list)  # for schedule=step
    gamma: float = 0.1
    warmup_epochs: int = 0


@dataclass
class ModelConfig:
    name: str = MISSING
    hidden: list[int] = field(default_factory=lambda: [256, 256])  # mlp
    channels: list[int] = field(default_factory=lambda: [32, 64])  # cnn
    width: int = 64  # base channel count (resnet18, cifar families)
    depth: int = 0  # cifar resnet/wrn/vgg depth; 0 = the architecture's own default
    widen_factor: int = 1  # wrn widening / resnet "x4" multiplier
    dropout: float = 0.0
    checkpoint: str | None = None  # load weights instead of training (teacher only)
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class DatasetConfig:
    name: str = MISSING
    root: str | None = None  # where the raw files are; None = the data set's default places
    download: bool = False  # opt-in torchvision download when the files are absent
    mirror: str | None = None  # base URL to download from instead of torchvision's mirrors
    val_size: float = 0.1  # validation split from train: a fraction (<1) or a count (>=1)
    split_seed: int = 0  # fixed so every job of a sweep sees the same split
    train_fraction: float = 1.0  # students train on a fixed random subset of this size
    omit_classes: list[int] = field(default_factory=list)  # absent from the student's transfer set
    keep_classes: list[int] = field(default_factory=list)  # transfer set restricted to these
    limit_train: int = 0  # keep only this many training images (0 = all): quick smoke runs
    limit_test: int = 0  # likewise for the test split
    augment: bool = False  # batched random crop + flip (image sets)
    crop_padding: int = 4
    hflip: bool = True


@dataclass
class RuntimeConfig:
    """Speed switches: none changes what is computed (see kdrun/perf.py, bench/bench_perf.py)."""

    num_threads: int = 0  # torch.set_num_threads; 0 = leave torch's default
    amp: str = "auto"  # auto (bf16 on CUDA) | bf16 | fp16 (CUDA, with loss scaling) | off
    compile: bool = False  # torch.compile the training step (opt-in: compiling takes a while)
    compile_backend: str = "inductor"  # "eager" only traces (tests)
    channels_last: bool = True  # NHWC layout for conv nets (CPU and CUDA)
    fused_optimizer: bool = False  # fused Adam/AdamW/SGD kernel: faster, rounding differs
    data_on_device: str = "auto"  # auto | device | host (pinned, non-blocking batch copies)
    cache_teacher_logits: bool = True
    progress: str = "auto"  # auto | on | off
    eval_batch_size: int = 1024


@dataclass
class AnalysisConfig:
    """Post-training analyses (kdrun.analyses); they read the trained models, train nothing new
    except the full-data baseline of the small-data comparison (through the store)."""

    dark_knowledge: bool = False  # soft targets of the teacher at several T (soft_targets)
    temperatures: list[float] = field(default_factory=lambda: [1.0, 2.0, 3.0, 5.0, 10.0, 20.0])
    examples: int = 6  # test images shown with their soft targets
    bias: float | None = None  # added to never-seen classes' logits; null = chosen automatically
    bias_prior: str = "teacher"  # automatic bias target: teacher | uniform
    full_data_epochs: int = 0  # the small-data comparison's full-data student; 0 = student's


@dataclass
class KdrunConfig:
    T: float = 4.0
    alpha: float = 0.9
    seed: int = 0
    teacher_seed: int = 0  # the teacher's own seed: a sweep over `seed` shares one teacher
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    baseline: bool = True
    store_dir: str = "outputs/store"
    resume: bool = True
    debug: bool = False
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    teacher: ModelConfig = field(default_factory=ModelConfig)
    student: ModelConfig = field(default_factory=ModelConfig)
    # Each method has its own typed options (kdrun.methods.*.Options), checked by validate().
    method: dict[str, Any] = field(default_factory=lambda: {"name": "kd"})
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    experiment: str | None = None  # name of the recipe, set by experiment/*.yaml


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="kdrun_schema", node=KdrunConfig)


OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "step")
AMP_MODES = ("auto", "bf16", "fp16", "off")
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
        for k, v in node.items():
            if k not in schema:
                out.append(prefix + str(k))
            elif isinstance(v, dict) and isinstance(schema[k], dict) and prefix + k != "method":
                walk(v, schema[k], f"{prefix}{k}.")  # method.* is checked by its own Options

    walk(given, ref, "")
    return out


def validate(cfg: DictConfig) -> None:
    """Semantic checks that must pass before anything is trained or written."""
    from kdrun.data import DATASETS
    from kdrun.methods import METHODS
    from kdrun.models import MODELS

    extra = unknown_keys(cfg)
    _check(
        not extra,
        f"unknown config key '{extra[0] if extra else ''}'; remove it (`kdrun --cfg job` lists "
        f"every key)",
    )
    _check(cfg.T > 0, f"T must be > 0 (got {cfg.T}); try T=4")
    _check(0 <= cfg.alpha <= 1, f"alpha must be in [0, 1] (got {cfg.alpha}); try alpha=0.9")
    ds = cfg.dataset
    _check(
        ds.name in DATASETS,
        f"unknown dataset '{ds.name}'; choose one of: {', '.join(sorted(DATASETS))}",
    )
    for role in ("teacher", "student"):
        m = cfg[role]
        _check(
            m.name in MODELS,
            f"unknown {role} model '{m.name}'; choose one of: {', '.join(sorted(MODELS))}",
        )
        _check(0 <= m.dropout < 1, f"{role}.dropout must be in [0, 1) (got {m.dropout})")
        _check_train(f"{role}.train", m.train)
    _check(
        cfg.method.name in METHODS,
        f"unknown method '{cfg.method.name}'; choose one of: {', '.join(sorted(METHODS))}",
    )
    _check(
        0 < ds.train_fraction <= 1,
        f"dataset.train_fraction must be in (0, 1] (got {ds.train_fraction})",
    )
    n_cls = DATASETS[ds.name].num_classes
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
    _check(ds.val_size >= 0, f"dataset.val_size must be >= 0 (got {ds.val_size})")
    _check(
        not (ds.omit_classes and ds.keep_classes),
        "set either dataset.omit_classes or dataset.keep_classes, not both",
    )
    _check(
        cfg.runtime.amp in AMP_MODES,
        f"unknown runtime.amp '{cfg.runtime.amp}'; choose one of: {', '.join(AMP_MODES)}",
    )
    _check(
        cfg.runtime.data_on_device in DATA_PLACEMENTS,
        f"unknown runtime.data_on_device '{cfg.runtime.data_on_device}'; choose one of: "
        f"{', '.join(DATA_PLACEMENTS)}",
    )
    _check(cfg.runtime.num_threads >= 0, "runtime.num_threads must be >= 0 (0 = torch's default)")
    _check(cfg.runtime.eval_batch_size >= 1, "runtime.eval_batch_size must be >= 1")
    _check(
        cfg.runtime.progress in ("auto", "on", "off"),
        f"unknown runtime.progress '{cfg.runtime.progress}'; choose one of: auto, on, off",
    )
    an = cfg.analysis
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
    rt = cfg.runtime
    _check(
        rt.eval_batch_size >= 1, f"runtime.eval_batch_size must be >= 1 (got {rt.eval_batch_size})"
    )
    _check(rt.num_threads >= 0, f"runtime.num_threads must be >= 0 (got {rt.num_threads})")
    METHODS[cfg.method.name].check_config(cfg)


def to_container(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
