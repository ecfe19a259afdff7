"""Inference in batches, accuracy, and the autocast policy shared by training and evaluation."""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import nn


def autocast_context(device: torch.device, amp: str):
    """bf16 autocast on CUDA by default ('auto'); opt-in bf16 on CPU; fp16 only on CUDA."""
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return nullcontext()
    dtype = torch.float16 if amp == "fp16" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


def module_device(module: nn.Module, default: torch.device) -> torch.device:
    return next((p.device for p in module.parameters()), default)


@torch.no_grad()  # not inference_mode: callers may feed the logits to autograd later
def predict(
    model: nn.Module, x: torch.Tensor, batch_size: int = 1024, amp: str = "off"
) -> torch.Tensor:
    """Logits for every row of x (float32, on the model's device), in eval mode, in batches."""
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
