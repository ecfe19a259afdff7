"""Seeding, RNG state capture, and the stage checkpoint file that makes a resume exact."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdrun.errors import CheckpointError
from kdrun.store import atomic_torch_save, load_weights

CHECKPOINT_VERSION = 1


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def rng_state(gen: torch.Generator, device: torch.device | None = None) -> dict[str, Any]:
    """Every RNG a training step draws from. On CUDA only the training device's generator:
    ``get_rng_state_all`` would tie the checkpoint to the number of GPUs visible at save time
    (restoring it with fewer raised IndexError)."""
    state = {
        "gen": gen.get_state(),
        "torch": torch.get_rng_state(),
        # numpy's state as plain types + a tensor, so weights_only=True can load it
        "numpy": [
            (torch.from_numpy(v.astype(np.int64)) if isinstance(v, np.ndarray) else v)
            for v in np.random.get_state()
        ],
        "python": random.getstate(),
    }
    if device is not None and device.type == "cuda":
        state["cuda_device"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(
    gen: torch.Generator, state: dict[str, Any], device: torch.device | None = None
) -> None:
    gen.set_state(state["gen"])
    torch.set_rng_state(state["torch"])
    np.random.set_state(
        tuple(
            v.numpy().astype(np.uint32) if isinstance(v, torch.Tensor) else v
            for v in state["numpy"]
        )
    )
    random.setstate(state["python"])
    # (a checkpoint of the old format's "cuda" list is ignored: it cannot be mapped safely)
    if "cuda_device" in state and device is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda_device"], device)


def read_checkpoint(path: Path, fingerprint: str) -> dict[str, Any] | None:
    """The checkpoint at ``path`` if it belongs to this stage (same fingerprint and format)."""
    try:
        ck = load_weights(path)
    except Exception as e:  # a torn file cannot happen (atomic writes), but disks lie
        raise CheckpointError(
            f"checkpoint {path} is unreadable ({e}); delete it to restart the stage"
        ) from None
    if ck.get("fingerprint") == fingerprint and ck.get("version") == CHECKPOINT_VERSION:
        return ck
    return None


def write_checkpoint(path: Path, fingerprint: str, payload: dict[str, Any]) -> None:
    atomic_torch_save({"version": CHECKPOINT_VERSION, "fingerprint": fingerprint, **payload}, path)
