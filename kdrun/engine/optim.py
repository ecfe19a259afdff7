"""Optimisers and learning-rate schedules from a model's training recipe (``*.train``)."""

from __future__ import annotations

import math

import torch


def make_optimizer(params, recipe, fused: bool = False) -> torch.optim.Optimizer:
    # ``fused`` (runtime.fused_optimizer=auto): one kernel updates each weight in a single pass
    # (Adam on the Fashion-MNIST MLP's 203k weights, 1 CPU thread: 0.14 ms against foreach's
    # 0.36); its rounding differs from the per-tensor loop in the last bits. Otherwise the
    # foreach implementation, which torch picks by itself only on CUDA: on a CPU it gives the
    # same bits as the per-tensor loop (tests/test_optim_foreach.py) and cut an MLP step by
    # ~20% (one kernel per operation over all parameters instead of one per parameter).
    fused_kw = {"fused": True} if fused else {"foreach": True}
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(
            params,
            lr=recipe.lr,
            momentum=recipe.momentum,
            nesterov=recipe.nesterov,
            weight_decay=recipe.weight_decay,
            **fused_kw,
        )
    cls = torch.optim.Adam if recipe.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=recipe.lr, weight_decay=recipe.weight_decay, **fused_kw)


def lr_factor(recipe, epoch: int) -> float:
    """Multiplier of the base lr for a 0-based epoch: linear warm-up, then the schedule."""
    if epoch < recipe.warmup_epochs:
        return (epoch + 1) / (recipe.warmup_epochs + 1)
    if recipe.schedule == "cosine":
        span = max(1, recipe.epochs - recipe.warmup_epochs)
        return 0.5 * (1 + math.cos(math.pi * (epoch - recipe.warmup_epochs) / span))
    if recipe.schedule == "step":
        return recipe.gamma ** sum(epoch >= m for m in recipe.milestones)
    return 1.0
