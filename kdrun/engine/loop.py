"""The one training loop, shared by teacher, baseline and distilled student.

It trains a ``Distiller`` (whose forward returns named losses), selects the epoch with the
best validation accuracy, checkpoints atomically at every epoch end so a killed run resumes
exactly, and refuses to continue on a NaN/inf loss. A stop request (SIGINT/SIGTERM) is honoured
at the next batch boundary with a mid-epoch checkpoint that resumes exactly, too: it carries the
epoch's batch order, the batches done, the running sums and every RNG state at that point.
"""

from __future__ import annotations

import copy
import logging
import math
import operator
import random
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import reduce
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kdrun.data import DataBundle, augment_batch, batch_indices
from kdrun.errors import CheckpointError, Interrupted, TrainingError
from kdrun.perf import Perf, fetch
from kdrun.store import atomic_torch_save, load_weights

CHECKPOINT_VERSION = 1
log = logging.getLogger("kdrun")


@dataclass
class FitResult:
    best_state: dict[str, torch.Tensor]
    last_state: dict[str, torch.Tensor]
    best_epoch: int
    best_val_acc: float
    last_val_acc: float
    train_seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)
    resumed_from_epoch: int = 0


def make_optimizer(params, recipe, fused: bool = False) -> torch.optim.Optimizer:
    # Pass ``fused`` only when asked: otherwise torch keeps its default implementation.
    fused_kw = {"fused": True} if fused else {}
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=recipe.lr, momentum=recipe.momentum, nesterov=recipe.nesterov,
            weight_decay=recipe.weight_decay, **fused_kw,
        )  # fmt: skip
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


def _rng_state(gen: torch.Generator) -> dict[str, Any]:
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
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(gen: torch.Generator, state: dict[str, Any]) -> None:
    gen.set_state(state["gen"])
    torch.set_rng_state(state["torch"])
    np.random.set_state(
        tuple(
            v.numpy().astype(np.uint32) if isinstance(v, torch.Tensor) else v
            for v in state["numpy"]
        )
    )
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def _check_finite(
    sums: dict[str, torch.Tensor], seen: int, stage: str, epoch: int, checkpoint: Path | None
) -> dict[str, float]:
    """Mean loss parts of the epoch so far; a NaN/inf one stops the stage before it is saved."""
    parts = {k: float(v) / max(seen, 1) for k, v in sums.items()}
    total = sum(parts.values())
    if not math.isfinite(total):
        key = {"baseline": "student"}.get(stage, stage)  # the baseline uses the student recipe
        kept = (
            f"the last good checkpoint is kept ({checkpoint})"
            if checkpoint is not None and checkpoint.is_file()
            else "no checkpoint had been written yet"
        )
        raise TrainingError(
            f"{stage}: loss became {total} in epoch {epoch + 1}; lower {key}.train.lr"
            f"{' (or T)' if stage == 'student' else ''} and rerun; {kept}"
        )
    return parts


def fit(
    distiller: nn.Module,
    data: DataBundle,
    recipe,
    *,
    stage: str,
    seed: int,
    train_idx: torch.Tensor,
    val_idx: torch.Tensor,
    teacher_cache: torch.Tensor | None = None,
    checkpoint: Path | None = None,
    fingerprint: str = "",
    amp: str = "off",
    eval_batch_size: int = 1024,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    on_step: Callable[[], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    resume: bool = True,
    perf: Perf | None = None,
) -> FitResult:
    """Train ``distiller``'s trainable parameters; select ``distiller.student`` on validation.

    ``teacher_cache`` holds per-sample teacher outputs indexed like ``data.x_train``; it is
    used only when the batch is not augmented (an augmented batch needs a fresh teacher pass,
    which the distiller does itself when given ``teacher_out=None``).
    ``checkpoint``: resume from it (unless ``resume`` is False) if it exists with the same
    ``fingerprint``; rewritten atomically at each epoch end and when a stop is requested.
    ``perf``: speed switches (kdrun.perf).
    """
    perf = perf or Perf()
    student = distiller.student
    device = module_device(student, data.x_train.device)  # data may stay in host memory
    gen = seed_everything(seed)
    params = distiller.trainable_parameters()
    opt = make_optimizer(params, recipe, fused=perf.fused_optimizer)
    # fp16 needs loss scaling against gradient underflow; bf16 has float32's range.
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16" and device.type == "cuda")
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: lr_factor(recipe, e))
    start_epoch, best_val, best_epoch, best_state = 0, -1.0, 0, None
    history: list[dict[str, Any]] = []
    elapsed = 0.0
    mid: dict[str, Any] | None = None  # the state of an epoch stopped part-way

    if resume and checkpoint is not None and checkpoint.is_file():
        try:
            ck = load_weights(checkpoint)
        except Exception as e:  # a torn file cannot happen (atomic writes), but disks lie
            raise CheckpointError(
                f"checkpoint {checkpoint} is unreadable ({e}); delete it to restart the stage"
            ) from None
        if ck.get("fingerprint") == fingerprint and ck.get("version") == CHECKPOINT_VERSION:
            distiller.load_state_dict(ck["distiller"])
            opt.load_state_dict(ck["optimizer"])
            sched.load_state_dict(ck["scheduler"])
            _set_rng_state(gen, ck["rng"])
            start_epoch, best_val, best_epoch = ck["epoch"], ck["best_val"], ck["best_epoch"]
            best_state, history, elapsed = ck["best_state"], ck["history"], ck["elapsed"]
            mid = ck.get("mid")
            where = (f"epoch {start_epoch + 1}, batch {mid['batch']}" if mid
                     else f"end of epoch {start_epoch}")  # fmt: skip
            log.info("%s: resuming from %s (%s)", stage, checkpoint, where)
            if "scaler" in ck:
                scaler.load_state_dict(ck["scaler"])

    def save(epoch_done: int, mid_state: dict[str, Any] | None) -> None:
        if checkpoint is None:
            return
        atomic_torch_save(
            {
                "version": CHECKPOINT_VERSION,
                "fingerprint": fingerprint,
                "epoch": epoch_done,
                "mid": mid_state,
                "distiller": distiller.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "rng": _rng_state(gen),
                **({"scaler": scaler.state_dict()} if scaler.is_enabled() else {}),
                "best_val": best_val,
                "best_epoch": best_epoch,
                "best_state": best_state,
                "history": history,
                "elapsed": elapsed,
            },  # fmt: skip
            checkpoint,
        )

    use_cache = teacher_cache is not None and not data.augment
    if use_cache and len(teacher_cache) != len(data.x_train):  # never train on a misaligned cache
        raise TrainingError(
            f"{stage}: the teacher cache has {len(teacher_cache)} rows but the training split "
            f"has {len(data.x_train)}; it is stale: delete it from the store"
        )
    perf.prepare_distiller(distiller)
    # The hot loop avoids host-device syncs (no .item()/float() per step) and keeps per-step
    # Python and kernel launches few: statistics accumulate in place on the device.
    for epoch in range(start_epoch, recipe.epochs):
        t0 = time.perf_counter()
        distiller.train()
        if mid is not None:  # continue the stopped epoch: same batch order, same running sums
            order, first, seen = mid["order"].to(train_idx.device), mid["batch"], mid["seen"]
            sums = {k: v.to(device) for k, v in mid["sums"].items()}
            correct = mid["correct"].to(device)
            t0 -= mid["seconds"]
            mid = None
        else:
            # The whole epoch's order up front: the draws from gen happen in the same sequence
            # as when batch_indices is iterated lazily, and the order can be checkpointed.
            parts_idx = list(batch_indices(train_idx, recipe.batch_size, gen))
            order = torch.cat(parts_idx) if parts_idx else train_idx
            first, seen = 0, 0
            sums = {}
            correct = torch.zeros((), dtype=torch.long, device=device)
        batches = order.split(recipe.batch_size)
        for b in range(first, len(batches)):
            if should_stop is not None and should_stop():
                note = "no progress to save since the last checkpoint"
                if b > first and checkpoint is not None:
                    _check_finite(sums, seen, stage, epoch, checkpoint)
                    save(epoch, {
                        "order": order.cpu(), "batch": b, "seen": seen,
                        "sums": {k: v.detach().cpu() for k, v in sums.items()},
                        "correct": correct.cpu(), "seconds": time.perf_counter() - t0,
                    })  # fmt: skip
                    note = f"checkpoint saved in {checkpoint}"
                elif checkpoint is None:
                    note = "no checkpoint"
                raise Interrupted(
                    f"{stage} stopped at epoch {epoch + 1}, batch {b}/{len(batches)}; {note}"
                )
            idx = batches[b]
            x, y = fetch(data.x_train, idx, device), fetch(data.y_train, idx, device)
            if data.augment:
                x = augment_batch(x, data.crop_padding, data.hflip, gen)
            # Cached teacher outputs are rows of the training split: keyed by sample index,
            # never by batch position, so shuffling cannot misalign them.
            t_out = fetch(teacher_cache, idx, device) if use_cache else None
            if idx.device != device:
                idx = idx.to(device, non_blocking=True)
            with autocast_context(device, amp):
                logits, losses = distiller(x, y, idx, t_out)
            loss = reduce(operator.add, losses.values())
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            n = len(idx)
            with torch.no_grad():
                for k, v in losses.items():
                    if k in sums:
                        sums[k].add_(v, alpha=n)
                    else:
                        sums[k] = v.float() * n
                correct += (logits.argmax(1) == y).sum()
            seen += n
            if on_step is not None:
                on_step()
        parts = _check_finite(sums, seen, stage, epoch, checkpoint)
        total = sum(parts.values())
        lr = opt.param_groups[0]["lr"]
        sched.step()
        val_acc = accuracy(
            predict(student, data.x_val.index_select(0, val_idx), eval_batch_size, amp),
            data.y_val.index_select(0, val_idx),
        )
        elapsed += time.perf_counter() - t0
        if val_acc >= best_val:  # ties go to the later (usually better-converged) epoch
            best_val, best_epoch, best_state = val_acc, epoch + 1, _cpu_state(student)
        row = {
            "stage": stage, "epoch": epoch + 1, "loss": total,
            "loss_soft": parts.get("soft"), "loss_hard": parts.get("hard"),
            **{f"loss_{k}": v for k, v in parts.items() if k not in ("soft", "hard")},
            "train_acc": float(correct) / seen, "val_acc": val_acc, "lr": lr,
            "seconds": time.perf_counter() - t0,
        }  # fmt: skip
        history.append(row)
        save(epoch + 1, None)
        if on_epoch is not None:
            on_epoch(row)

    if best_state is None:  # zero epochs left to run and nothing stored: cannot happen
        best_state = _cpu_state(student)
    return FitResult(
        best_state=copy.deepcopy(best_state),
        last_state=_cpu_state(student),
        best_epoch=best_epoch,
        best_val_acc=best_val,
        last_val_acc=history[-1]["val_acc"] if history else best_val,
        train_seconds=elapsed,
        history=history,
        resumed_from_epoch=start_epoch,
    )
