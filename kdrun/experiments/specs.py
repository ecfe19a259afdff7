"""What a job's store keys are made of (models, data, the resumable part of the config), and
the small facts about models and data every experiment kind needs (labels, load hints)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from kdrun.config import DatasetConfig, to_container
from kdrun.data import DATASETS, LoadHints, parse_size
from kdrun.models import is_pretrained, preprocessing, weights_identity
from kdrun.store import CorruptArtifact
from kdrun.tasks import task_named

# Keys for models from outside kdrun, left out of store keys at their defaults so the keys of
# kdrun's own models (stored before these keys existed) stay what they were.
_EXTERNAL_DEFAULTS = {
    "arch": None,
    "weights": None,
    "path": None,
    "num_classes_from_data": False,
    "trust_remote_code": False,
    "finetune_epochs": 0,
    "_target_": None,
    "kwargs": {},
    "dim": 0,  # knowledge-graph embedding width (absent from older keys)
}


def model_spec(model_cfg: DictConfig, built: nn.Module | None = None) -> dict[str, Any]:
    """The model's part of a store key. A pretrained model is keyed by its weights' content
    (a file's or a save_pretrained directory's hash); one used as built
    (``teacher.pretrained=true``) has no file to hash, so with ``built`` (the model as built)
    the hash of its weights stands in."""
    spec = to_container(model_cfg)
    spec.pop("checkpoint", None)
    for k, default in _EXTERNAL_DEFAULTS.items():
        if spec.get(k, default) == default:
            spec.pop(k, None)
    ident = weights_identity(model_cfg)  # the weights' content, not their file name
    if ident:
        spec["weights"] = ident
        spec.pop("path", None)
    elif built is not None and is_pretrained(model_cfg):
        spec["state"] = state_digest(built)
    # absent unless set (older store keys stay valid), and beside weights it names nothing
    # more: teacher=hf_causal_lm teacher.path=M and the same with pretrained=true share a key
    if not spec.get("pretrained") or ident:
        spec.pop("pretrained", None)
    return spec


def state_digest(model: nn.Module) -> str:
    """sha256 of a model's weights (names, shapes and values): what a cache derived from a
    pretrained model is keyed by."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def model_label(model_cfg: DictConfig) -> str:
    """The model's name in tables: kdrun's name, or e.g. torchvision:resnet18 / hf:vit-tiny."""
    if model_cfg.get("arch") and model_cfg.name in ("torchvision", "timm"):
        return f"{model_cfg.name}:{model_cfg.arch}"
    if model_cfg.name == "hf" and model_cfg.get("path"):
        return f"hf:{Path(model_cfg.path).name}"
    if model_cfg.name == "custom" and model_cfg.get("_target_"):
        return str(model_cfg._target_).rsplit(".", 1)[-1]
    return str(model_cfg.name)


def load_hints(cfg: DictConfig) -> LoadHints:
    """A pretrained teacher's preprocessing (the user's data follows it unless dataset.*
    says otherwise) and the memory limit above which the user's images stream from disk."""
    pre = preprocessing(cfg.teacher) if is_pretrained(cfg.teacher) else None
    return LoadHints(
        image_size=pre.image_size if pre else None,
        mean=pre.mean if pre else None,
        std=pre.std if pre else None,
        max_data_memory=parse_size(cfg.runtime.max_data_memory),
    )


def run_test_inputs(run_dir: Path, n: int) -> torch.Tensor:
    """The first ``n`` test inputs of a finished run's data, preprocessed as it trained
    (what `kdrun export` checks an ONNX file on)."""
    cfg = OmegaConf.load(Path(run_dir) / ".hydra" / "config.yaml")
    task = task_named(DATASETS[cfg.dataset.name].task)
    data = task.load_data(cfg.dataset, load_hints(cfg))
    return data.x_test[0:n]


# Text-corpus fields (task lm): in the key only when set away from their defaults, so the
# keys of image data sets stay as they were.
_TEXT_KEYS = ("glob", "tokenizer", "block_size", "stride", "test_size")


def data_spec(cfg: DictConfig, student: bool, content: Any = None) -> dict[str, Any]:
    """The data set fields that change what a model trained on it learns; ``content``: the
    data's fingerprint (the user's images and statistics, a text corpus's sha256)."""
    ds = cfg.dataset
    spec = {
        "name": ds.name,
        "val_size": ds.val_size,
        "val_max": ds.val_max,
        "split_seed": ds.split_seed,
        "augment": ds.augment,
        "crop_padding": ds.crop_padding,
        "hflip": ds.hflip,
        # limit_train changes the training data; limit_test the test numbers kept in meta.
        "limit_train": ds.limit_train,
        "limit_test": ds.limit_test,
    }
    defaults = DatasetConfig()
    spec.update({k: ds[k] for k in _TEXT_KEYS if ds[k] != getattr(defaults, k)})
    if student:
        spec.update(
            train_fraction=ds.train_fraction,
            omit_classes=list(ds.omit_classes),
            keep_classes=list(ds.keep_classes),
        )
    if content:
        spec["content"] = content
    return spec


def first_reason(e: BaseException) -> str:
    """The informative line of an error: load_state_dict puts the reason on its second line."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    if len(lines) > 1 and lines[0].startswith("Error(s) in loading state_dict"):
        lines = lines[1:]
    text = lines[0] if lines else type(e).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def check_state(model: nn.Module):
    def check(state: Any) -> None:
        if not isinstance(state, dict):
            raise CorruptArtifact("payload is not a state dict")
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise CorruptArtifact(first_reason(e)) from None

    return check


def resumable_config(cfg: DictConfig) -> dict[str, Any]:
    """The config a checkpoint must match to be resumed: without switches that change no result."""
    c = to_container(cfg)
    # device: a job moved from cuda to cuda:1 (or to another node) resumes, not restarts
    for k in ("resume", "debug", "device"):
        c.pop(k, None)
    for k in ("progress", "dist_backend", "dist_timeout_s"):
        c.get("runtime", {}).pop(k, None)
    return c
