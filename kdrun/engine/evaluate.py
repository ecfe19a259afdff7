"""Inference in batches, accuracy, and the autocast policy shared by training and evaluation."""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import nn

from kdrun.engine.device import effective_amp
from kdrun.engine.distributed import current


def resolve_amp(amp: str, device: torch.device) -> str:
    """What ``runtime.amp`` means on ``device``: off | bf16 | fp16.

    'auto' is off on CPU; on CUDA bf16 where the GPU computes it natively (compute capability
    >= 8, Ampere and later), else fp16 (V100, T4 emulate bf16 slowly), which the training loop
    pairs with a GradScaler. Explicit modes go through effective_amp (bf16 on a CPU without
    native bf16 falls back to float32; bf16_force is bf16).
    """
    if amp != "auto":
        return effective_amp(amp, device)
    if device.type != "cuda":
        return "off"
    return "bf16" if torch.cuda.get_device_capability(device)[0] >= 8 else "fp16"


def autocast_context(device: torch.device, amp: str):
    """Autocast for ``runtime.amp`` on ``device`` (see resolve_amp): bf16 on CUDA by default,
    opt-in bf16 on CPU, fp16 only on CUDA."""
    mode = resolve_amp(amp, device)
    if mode == "off":
        return nullcontext()
    dtype = torch.float16 if mode == "fp16" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


def module_device(module: nn.Module, default: torch.device) -> torch.device:
    return next((p.device for p in module.parameters()), default)


def predict(
    model: nn.Module, x: torch.Tensor, batch_size: int = 1024, amp: str = "off"
) -> torch.Tensor:
    """Logits for every row of x (float32, on the model's device), in eval mode, in batches.

    In a job of several processes every rank computes its share of the rows and all of them
    are gathered, so every rank gets the same logits (every rank must call it).
    """
    dist = current()
    if not dist.enabled:
        return _predict(model, x, batch_size, amp)
    device = module_device(model, x.device)
    return dist.sharded_rows(len(x), lambda a, b: _predict(model, x[a:b], batch_size, amp), device)


@torch.no_grad()  # not inference_mode: callers may feed the logits to autograd later
def _predict(model: nn.Module, x: torch.Tensor, batch_size: int, amp: str) -> torch.Tensor:
    was_training = model.training
    model.eval()
    outs = []
    device = module_device(model, x.device)
    with autocast_context(device, amp):
        for start in range(0, len(x), batch_size):
            xb = x[start : start + batch_size].to(device, non_blocking=True)
            outs.append(model(xb).float())
    model.train(was_training)
    return torch.cat(outs) if outs else torch.empty(0)


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    y = y.to(logits.device)
    return float((logits.argmax(1) == y).float().mean()) if len(y) else float("nan")
