"""Typed configuration schema and the semantic checks that run before any training.

The YAML files under ``conf/`` are merged onto these dataclasses, so a misspelled key or a
value of the wrong type is rejected by OmegaConf with the key named.  ``validate`` adds the
checks a type cannot express (``T > 0``, known model names, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from kdrun.catalog import config_dir as config_dir  # re-exported: callers import it from here
from kdrun.config.condense import CondenseConfig


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
    # > 0: an "epoch" is this many batches drawn afresh from the training rows (for corpora
    # too large to pass over: validation, selection and checkpoints happen at its end)
    steps_per_epoch: int = 0
    # This stage's own augmentation switch; None: the data set's (dataset.augment). Lets a
    # recipe regularise the teacher alone, as Hinton et al.'s jittered MNIST teacher, while the
    # students see the plain images (dataset.crop_padding / hflip still say what it does).
    augment: bool | None = None


@dataclass
class ModelConfig:
    name: str = MISSING
    hidden: list[int] = field(default_factory=lambda: [256, 256])  # mlp
    channels: list[int] = field(default_factory=lambda: [32, 64])  # cnn
    width: int = 64  # base channel count (resnet18, cifar families)
    depth: int = 0  # cifar resnet/wrn/vgg depth; 0 = the architecture's own default
    widen_factor: int = 1  # wrn widening / resnet "x4" multiplier
    dropout: float = 0.0
    # mlp: dropout on the input pixels, as Hinton et al. (2012) regularised their MNIST nets
    # (0.2; hidden layers 0.5). 0 leaves the model and its store keys as they were.
    input_dropout: float = 0.0
    checkpoint: str | None = None  # load weights instead of training (teacher only)
    # Models from outside kdrun (torchvision, timm, hf, custom: kdrun.models.external).
    arch: str | None = None  # torchvision/timm architecture name
    weights: str | None = None  # state-dict file, DEFAULT (torchvision) or hub (timm)
    path: str | None = None  # hf, hf_causal_lm: a save_pretrained directory
    num_classes_from_data: bool = False  # resize a pretrained head to the data's class count
    trust_remote_code: bool = False  # hf: run the model repository's own code (opt-in)
    finetune_epochs: int = 0  # a pretrained teacher: fine-tune it this many epochs first
    _target_: str | None = None  # custom: the nn.Module class by import path
    kwargs: dict[str, Any] = field(default_factory=dict)  # custom: constructor arguments
    # teacher only: pretrained, used as built (evaluated, not trained); weights=, and path= of
    # hf / hf_causal_lm, imply it (models.is_pretrained)
    pretrained: bool = False
    n_layer: int = 2  # gpt: transformer blocks
    n_head: int = 2  # gpt: attention heads (dividing n_embd)
    n_embd: int = 128  # gpt: width
    block_size: int = 0  # gpt: positions; 0 = the data's dataset.block_size
    dim: int = 0  # rotate, complex, transe: the embedding dimension
    # Which view of each example the model reads (kdrun.data.views): None = the data set's
    # own (full, or its first named view); e.g. low_res, or a named view such as mfeat's fou
    view: str | None = None
    # A plugin model's own fields, checked against the dataclass it registered
    # (register_model(name, options=...); kdrun.config.options.model_options)
    options: dict[str, Any] = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class DatasetConfig:
    name: str = MISSING
    root: str | None = None  # where the raw files are; None = the data set's default places
    download: bool = False  # opt-in torchvision download when the files are absent
    mirror: str | None = None  # base URL to download from instead of torchvision's mirrors
    val_size: float = 0.1  # validation split from train: a fraction (<1) or a count (>=1)
    val_max: int = 0  # at most this many validation images from a fraction (0 = no cap)
    split_seed: int = 0  # fixed so every job of a sweep sees the same split
    train_fraction: float = 1.0  # students train on a fixed random subset of this size
    # with train_fraction < 1: the distilled student also learns the teacher's soft targets on
    # the rest of the transfer set, without its labels (Hinton et al. 2015, section 2); the
    # baseline, which only learns from labels, keeps the labelled subset. A no-op at 1.
    # off | on | auto: on where the method learns from unlabelled images (kd, dist, the
    # feature methods, ...), off for those that need every label (dkd, crd, ...); the job
    # records the value it used (metrics.json data.unlabelled_transfer). true/false read as on/off
    unlabelled_transfer: str = "off"
    omit_classes: list[int] = field(default_factory=list)  # absent from the student's transfer set
    keep_classes: list[int] = field(default_factory=list)  # transfer set restricted to these
    limit_train: int = 0  # keep only this many training images (0 = all): quick smoke runs
    limit_test: int = 0  # likewise for the test split
    augment: bool = False  # batched random crop + flip (image sets)
    crop_padding: int = 4
    hflip: bool = True
    low_res_factor: int = 4  # the low_res view: images area-downsampled by this factor
    # The user's own data (image_folder, tensors, hf: kdrun.data.external).
    # tensors: FILE.npz; hf: a datasets directory; synthetic: synthetic.pt; text: FILE_OR_DIR
    path: str | None = None
    image_size: Any = None  # N or [H, W]; None: the images' own, or a pretrained teacher's
    mean: list[float] | None = None  # per channel on [0, 1] pixels; None: computed on train
    std: list[float] | None = None
    on_bad_image: str = "skip"  # skip (one warning) | error
    in_memory: bool = True  # false: stream from disk per batch
    num_workers: int = 2  # image decoding threads
    image_column: str = "image"  # hf
    label_column: str = "label"  # hf
    # text corpora (task lm: kdrun.data.text)
    glob: str = "*"  # dataset=text with a directory: the files to read (recursively)
    tokenizer: str | None = None  # a local Hugging Face tokenizer directory; None = bytes
    block_size: int = 256  # tokens per training context
    stride: int = 0  # tokens between window starts; 0 = block_size (non-overlapping)
    test_size: float = 0.1  # share of the text held out for test (val_size: for validation)
    # A plugin data set's own fields, checked against the dataclass it registered
    # (register_dataset(..., options=...); kdrun.config.options.dataset_options)
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class RuntimeConfig:
    """Speed switches: none changes what is computed (see kdrun/perf.py, bench/bench_perf.py)."""

    # auto: usable cores (affinity, cgroup quota, SLURM_CPUS_PER_TASK) // the multirun's
    # joblib n_jobs, fixed for every stage (no clock read: the same command repeats bit for
    # bit); adaptive: that count, then on a CPU each stage trains on 1 thread or all of them,
    # re-decided from step times (kdrun/engine/threads.py; faster on a shared machine, not
    # repeatable); N: torch.set_num_threads(N), fixed; 0: torch's default (every core)
    num_threads: Any = "auto"
    # auto (bf16 on CUDA, float32 on CPU) | bf16 (on a CPU without native bf16: float32 and a
    # warning) | bf16_force | fp16 (CUDA, with loss scaling) | off
    amp: str = "auto"
    compile: bool = False  # torch.compile the training step (opt-in: compiling takes a while)
    compile_backend: str = "inductor"  # "eager" only traces (tests)
    channels_last: bool = True  # NHWC layout for conv nets (CPU and CUDA)
    # auto (torch's fused Adam/AdamW/SGD kernel on CPU and CUDA: one pass over the weights;
    # rounding differs from the per-tensor loop in the last bits) | true | false (foreach:
    # the per-tensor loop's bits)
    fused_optimizer: Any = "auto"
    data_on_device: str = "auto"  # auto | device | host (pinned, non-blocking batch copies)
    cache_teacher_logits: bool = True
    progress: str = "auto"  # auto | on | off
    # the baseline trains in a second process beside the distilled student (CPU, >= 2 threads):
    # auto (num_threads=adaptive, not stored, >= 30 s by a timed step, data under 1 GiB, not
    # deterministic) | on | off
    parallel_baseline: str = "auto"
    eval_batch_size: int = 1024
    # Several processes (torchrun / Slurm tasks; docs/distributed.md). These change results
    # (sync_bn) or only reproducibility (deterministic), never what a single process computes.
    dist_backend: str = "auto"  # auto (nccl on CUDA, gloo on CPU) | nccl | gloo
    sync_bn: str = "auto"  # auto (on for CUDA jobs of >1 process with BatchNorm) | on | off
    dist_timeout_s: int = 1800  # a rank waiting longer at a collective fails the job
    # deterministic GPU kernels (CUDA: slower; see docs/distributed.md; CPU numerics at a fixed
    # thread count repeat without it); with num_threads=adaptive, each stage keeps its
    # calibrated thread count (no timing-driven switches)
    deterministic: bool = False
    max_data_memory: str = "8GB"  # the user's image data above this size streams from disk


@dataclass
class AnalysisConfig:
    """Post-training analyses (kdrun.analyses); they read the trained models, train nothing new
    except the full-data baseline of the small-data comparison (through the store)."""

    dark_knowledge: bool = False  # soft targets of the teacher at several T (soft_targets)
    temperatures: list[float] = field(default_factory=lambda: [1.0, 2.0, 3.0, 5.0, 10.0, 20.0])
    examples: int = 6  # test images shown with their soft targets
    bias: float | None = None  # added to never-seen classes' logits; null = chosen automatically
    bias_prior: str = "teacher"  # automatic bias target: teacher | uniform
    # the small-data comparison's full-data student: epochs over every image (no
    # steps_per_epoch cap); 0 = the student's recipe as it is
    full_data_epochs: int = 0


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
    kind: str = "distill"  # what the job does (kdrun.experiments.KINDS): distill | condense
    condense: CondenseConfig = field(default_factory=CondenseConfig)  # kind=condense only
    # Experiment trackers from the `logger` group ({name: options}; conf/logger/*.yaml)
    logger: dict[str, Any] = field(default_factory=dict)
    # What a search (hparams_search=...) maximises: a metrics.json key, never a test metric
    optimized_metric: str = "student.val_acc"


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="kdrun_schema", node=KdrunConfig)


def to_container(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
