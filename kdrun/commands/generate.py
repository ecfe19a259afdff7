"""Text from a trained language model of a run directory (``kdrun generate``)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from kdrun.config import DatasetConfig, ModelConfig
from kdrun.data import DATASETS
from kdrun.errors import CheckpointError, ConfigError
from kdrun.models.gpt import sample
from kdrun.store import load_weights
from kdrun.tasks import task_named


def run_config(run_dir: Path) -> DictConfig:
    """The config a run directory was made with (.hydra/config.yaml, else metrics.json)."""
    cfg_file = run_dir / ".hydra" / "config.yaml"
    if cfg_file.is_file():
        return OmegaConf.load(cfg_file)
    if (run_dir / "metrics.json").is_file():
        return OmegaConf.create(json.loads((run_dir / "metrics.json").read_text())["config"])
    raise CheckpointError(
        f"{run_dir} is not a kdrun run directory (no .hydra/config.yaml or metrics.json); "
        f"give the directory a run printed"
    )


def generate_text(
    run_dir: Path,
    prompt: str,
    tokens: int,
    role: str = "student",
    temperature: float = 0.8,
    top_p: float = 0.95,
    seed: int = 0,
) -> str:
    """``prompt`` continued by ``tokens`` tokens sampled from the run's ``role`` model."""
    cfg = run_config(run_dir)
    name = cfg.dataset.name
    if name not in DATASETS or DATASETS[name].task != "lm":
        raise ConfigError(f"{run_dir} trained on {name}, not a text corpus; nothing to generate")
    task = task_named("lm")
    data = task.load_data(OmegaConf.merge(OmegaConf.structured(DatasetConfig), cfg.dataset))
    model = task.build_model(OmegaConf.merge(OmegaConf.structured(ModelConfig), cfg[role]), data)
    weights = run_dir / "checkpoints" / f"{role}.pt"
    if not weights.is_file():
        raise CheckpointError(f"{weights} does not exist; has the run finished?")
    try:
        model.load_state_dict(load_weights(weights))
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[-1]
        raise CheckpointError(f"{weights} does not fit {cfg[role].name} ({first})") from None
    ids = data.tokenizer.encode(prompt.encode("utf-8"))
    if len(ids) == 0:
        raise ConfigError("--prompt is empty; give at least one character, e.g. --prompt 'def '")
    gen = torch.Generator().manual_seed(seed)
    prompt_ids = torch.as_tensor(ids, dtype=torch.long)[None]
    out = sample(model, prompt_ids, tokens, temperature, top_p, gen)
    return data.tokenizer.decode(out[0].tolist())
