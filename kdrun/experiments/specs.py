"""The small facts about models and data every experiment kind needs (labels, load hints,
weight checks) and the resumable part of the config. Store keys are kdrun.experiments.keys'."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from kdrun.config import to_container
from kdrun.data import DATASETS, LoadHints, parse_size
from kdrun.models import is_pretrained, preprocessing
from kdrun.store import CorruptArtifact
from kdrun.tasks import task_named


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
