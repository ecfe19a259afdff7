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
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import reduce
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdrun.data import UNLABELLED, DataBundle, augment_batch, batch_indices
from kdrun.engine.checkpoint import (
    read_checkpoint,
    rng_state,
    seed_everything,
    set_rng_state,
    write_checkpoint,
)
from kdrun.engine.distributed import current, merge_short_tail, sync_buffers, wrap
from kdrun.engine.evaluate import (
    accuracy,
    autocast_context,
    module_device,
    predict,
    resolve_amp,
)
from kdrun.engine.optim import lr_factor, make_optimizer
from kdrun.engine.perf import Perf, RowCache, fetch
from kdrun.errors import Interrupted, TrainingError

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


@dataclass
class _Progress:
    """What a checkpoint carries besides the modules', optimiser's and RNGs' own state."""

    epoch: int = 0  # epochs completed
    best_val: float = -math.inf  # the selection score (higher is better)
    best_epoch: int = 0
    best_state: dict[str, torch.Tensor] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    elapsed: float = 0.0
    mid: dict[str, Any] | None = None  # the state of an epoch stopped part-way


@dataclass
class _Epoch:
    """The running position and sums of one epoch: what a mid-epoch checkpoint saves."""

    order: torch.Tensor
    first: int
    seen: int
    sums: dict[str, torch.Tensor]
    correct: torch.Tensor
    t0: float


def val_accuracy(
    model: nn.Module, data: DataBundle, val_idx: torch.Tensor, batch_size: int, amp: str
) -> float:
    """The default model-selection score: accuracy on the validation rows ``val_idx``."""
    return accuracy(
        predict(model, data.x_val.index_select(0, val_idx), batch_size, amp),
        data.y_val.index_select(0, val_idx),
    )


ValScore = Callable[[nn.Module, DataBundle, torch.Tensor, int, str], float]


@dataclass(frozen=True)
class Selection:
    """The validation metric a task selects its models on: its name in the history rows and
    its direction (accuracy: higher; bits per byte: lower)."""

    name: str = "val_acc"
    higher_is_better: bool = True

    def score(self, value: float) -> float:
        """A number where higher is always better (what best_val holds)."""
        return value if self.higher_is_better else -value


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


class _Trainer:
    """One stage's training state and the pieces of its loop: resume, step, epoch, save."""

    def __init__(
        self,
        distiller: nn.Module,
        data: DataBundle,
        recipe,
        stage: str,
        seed: int,
        amp: str,
        perf: Perf,
        checkpoint: Path | None,
        fingerprint: str,
    ) -> None:
        # the task's validation metric and its direction (fit sets them)
        self.val_score: ValScore = val_accuracy
        self.selection = Selection()
        self.distiller, self.data, self.recipe, self.stage = distiller, data, recipe, stage
        self.amp, self.checkpoint, self.fingerprint = amp, checkpoint, fingerprint
        self.device = module_device(distiller.student, data.x_train.device)  # data may be on host
        self.dist = current()  # several processes: see kdrun/engine/distributed.py
        self.model: nn.Module = distiller  # what a step calls: DDP(distiller) under DDP
        self.gen = seed_everything(seed)
        self.opt = make_optimizer(
            distiller.trainable_parameters(), recipe, fused=perf.fused_optimizer
        )
        # fp16 needs loss scaling against gradient underflow; bf16 has float32's range.
        self.scaler = torch.amp.GradScaler(
            self.device.type,
            enabled=resolve_amp(amp, self.device) == "fp16" and self.device.type == "cuda",
        )
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda e: lr_factor(recipe, e))
        self.progress = _Progress()

    # ---- checkpoints ----------------------------------------------------------------
    def resume(self) -> None:
        if self.checkpoint is None or not self.checkpoint.is_file():
            return
        ck = read_checkpoint(self.checkpoint, self.fingerprint)
        if ck is None:
            return
        self.distiller.load_state_dict(ck["distiller"])
        self.opt.load_state_dict(ck["optimizer"])
        self.sched.load_state_dict(ck["scheduler"])
        set_rng_state(self.gen, ck["rng"], self.device)
        self.progress = _Progress(
            ck["epoch"],
            ck["best_val"],
            ck["best_epoch"],
            ck["best_state"],
            ck["history"],
            ck["elapsed"],
            ck.get("mid"),
        )
        p = self.progress
        where = (
            f"epoch {p.epoch + 1}, batch {p.mid['batch']}" if p.mid else f"end of epoch {p.epoch}"
        )
        log.info("%s: resuming from %s (%s)", self.stage, self.checkpoint, where)
        if "scaler" in ck:
            self.scaler.load_state_dict(ck["scaler"])

    def save(self, epoch_done: int, mid: dict[str, Any] | None) -> None:
        if self.checkpoint is None or not self.dist.is_main:  # rank 0 writes for all
            return
        p = self.progress
        scaler = {"scaler": self.scaler.state_dict()} if self.scaler.is_enabled() else {}
        write_checkpoint(
            self.checkpoint,
            self.fingerprint,
            {
                "epoch": epoch_done,
                "mid": mid,
                "distiller": self.distiller.state_dict(),
                "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict(),
                "rng": rng_state(self.gen, self.device),
                **scaler,
                "best_val": p.best_val,
                "best_epoch": p.best_epoch,
                "best_state": p.best_state,
                "history": p.history,
                "elapsed": p.elapsed,
            },
        )

    def stop(self, epoch: int, ep: _Epoch, b: int, n_batches: int) -> Interrupted:
        """Save the epoch's position (if any progress was made) and say where it stopped."""
        note = "no progress to save since the last checkpoint"
        if b > ep.first and self.checkpoint is not None:
            sums, seen, correct = self._global(ep)
            _check_finite(sums, seen, self.stage, epoch, self.checkpoint)
            self.save(
                epoch,
                {
                    "order": ep.order.cpu(),
                    "batch": b,
                    "seen": seen,
                    "sums": {k: v.detach().cpu() for k, v in sums.items()},
                    "correct": correct.cpu(),
                    "seconds": time.perf_counter() - ep.t0,
                },
            )
            note = f"checkpoint saved in {self.checkpoint}"
        elif self.checkpoint is None:
            note = "no checkpoint"
        return Interrupted(
            f"{self.stage} stopped at epoch {epoch + 1}, batch {b}/{n_batches}; {note}"
        )

    # ---- one epoch ----------------------------------------------------------------
    def begin_epoch(self, train_idx: torch.Tensor) -> _Epoch:
        t0 = time.perf_counter()
        self.distiller.train()
        mid = self.progress.mid
        if mid is not None:  # continue the stopped epoch: same batch order, same running sums
            self.progress.mid = None
            # the saved sums are over all ranks: one rank carries them, the others start at 0
            own = 1 if self.dist.is_main else 0
            return _Epoch(
                mid["order"].to(train_idx.device),
                mid["batch"],
                mid["seen"] * own,
                {k: v.to(self.device) * own for k, v in mid["sums"].items()},
                mid["correct"].to(self.device, torch.float32) * own,
                t0 - mid["seconds"],
            )
        # The whole epoch's order up front: the draws from gen happen in the same sequence
        # as when batch_indices is iterated lazily, and the order can be checkpointed.
        parts = list(batch_indices(train_idx, self.recipe.batch_size, self.gen))
        if self.recipe.steps_per_epoch > 0:  # a fresh random subset of rows per "epoch"
            parts = parts[: self.recipe.steps_per_epoch]
        order = torch.cat(parts) if parts else train_idx
        correct = torch.zeros((), dtype=torch.float32, device=self.device)
        return _Epoch(order, 0, 0, {}, correct, t0)

    def step(self, batch: torch.Tensor, ep: _Epoch, cache: RowCache | None) -> None:
        """One optimiser step on the (global) batch of training rows ``batch``; under DDP this
        rank takes its slice of it."""
        data, device, dist = self.data, self.device, self.dist
        idx = dist.shard(batch)
        x, y = fetch(data.x_train, idx, device), fetch(data.y_train, idx, device)
        if data.augment:
            start = dist.bounds(len(batch))[0] if dist.enabled else 0
            part = (start, start + len(idx), len(batch))
            x = augment_batch(x, data.crop_padding, data.hflip, self.gen, part)
        # Cached teacher outputs are rows of the training split: keyed by sample index,
        # never by batch position, so shuffling cannot misalign them.
        t_out = cache.fetch(idx, device) if cache is not None else None
        if idx.device != device:
            idx = idx.to(device, non_blocking=True)
        with autocast_context(device, self.amp):
            logits, losses = self.model(x, y, idx, t_out)
        loss = reduce(operator.add, losses.values())
        if dist.enabled:  # DDP averages gradients over ranks: make that the global mean's
            loss = loss * dist.loss_scale(len(idx), len(batch))
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        # Statistics accumulate in place on the device: no host sync per step.
        n = len(idx)
        with torch.no_grad():
            for k, v in losses.items():
                if k in ep.sums:
                    ep.sums[k].add_(v, alpha=n)
                else:
                    ep.sums[k] = v.float() * n
            # per-sample share of correct predictions (a token sequence counts as one sample)
            hits = logits.argmax(-1) == self.distiller.accuracy_targets(y)
            ep.correct += hits.sum() * (n / max(hits.numel(), 1))
        ep.seen += n

    def end_epoch(self, epoch: int, ep: _Epoch, val_idx: torch.Tensor, eval_bs: int) -> dict:
        """Validate, select, record the epoch's row and checkpoint; return the row."""
        sums, seen, correct = self._global(ep)
        parts = _check_finite(sums, seen, self.stage, epoch, self.checkpoint)
        lr = self.opt.param_groups[0]["lr"]
        self.sched.step()
        student, p = self.distiller.student, self.progress
        sync_buffers(student, self.dist)  # one model evaluated: rank 0's BatchNorm statistics
        val = self.val_score(student, self.data, val_idx, eval_bs, self.amp)
        score = self.selection.score(val)
        p.elapsed += time.perf_counter() - ep.t0
        if score >= p.best_val:  # ties go to the later (usually better-converged) epoch
            p.best_val, p.best_epoch, p.best_state = score, epoch + 1, _cpu_state(student)
        row = {
            "stage": self.stage,
            "epoch": epoch + 1,
            "loss": sum(parts.values()),
            "loss_soft": parts.get("soft"),
            "loss_hard": parts.get("hard"),
            **{f"loss_{k}": v for k, v in parts.items() if k not in ("soft", "hard")},
            "train_acc": float(correct) / self._scored(ep, seen),
            self.selection.name: val,
            "lr": lr,
            "seconds": time.perf_counter() - ep.t0,
        }
        # Per-epoch values a method reports besides its losses (e.g. CTKD's learned T); the
        # engine does not know methods, so any module with epoch_metrics() may add columns.
        epoch_metrics = getattr(self.distiller, "epoch_metrics", None)
        if epoch_metrics is not None:
            row.update(epoch_metrics())
        p.history.append(row)
        self.save(epoch + 1, None)
        return row

    def _scored(self, ep: _Epoch, seen: int) -> int:
        """The epoch's rows that carry a label: an unlabelled image of the transfer set
        (UNLABELLED, which no prediction matches) is not scored in train_acc. Counted from the
        epoch's order (global, checkpointed), so resumed and DDP epochs count alike."""
        y = self.data.y_train
        if y.dim() != 1:  # token targets: every sequence is scored
            return seen
        unlabelled = int(y.index_select(0, ep.order.to(y.device)).eq(UNLABELLED).sum())
        return max(1, seen - unlabelled)

    def _global(self, ep: _Epoch) -> tuple[dict[str, torch.Tensor], int, torch.Tensor]:
        """The epoch's running sums, rows seen and correct predictions over all ranks."""
        if not self.dist.enabled:
            return ep.sums, ep.seen, ep.correct
        keys = sorted(ep.sums)
        flat = torch.stack(
            [ep.sums[k].double() for k in keys]
            + [ep.correct.double(), torch.tensor(float(ep.seen), device=self.device).double()]
        )
        self.dist.all_reduce_sum(flat)
        sums = {k: flat[i].float() for i, k in enumerate(keys)}
        return sums, int(flat[-1].item()), flat[-2].round().long()

    def should_stop(self, asked: Callable[[], bool] | None) -> bool:
        """A stop requested on any rank stops every rank at the same batch boundary."""
        stop = asked is not None and asked()
        return self.dist.any(stop, self.device) if self.dist.enabled else stop

    def result(self, start_epoch: int) -> FitResult:
        p, student = self.progress, self.distiller.student
        # No epoch had a validation score (no validation rows: data-free students, the tiny
        # sets of dataset condensation): the last weights are the result, with no score.
        if p.best_state is None:
            p.best_state = _cpu_state(student)
        return FitResult(
            best_state=copy.deepcopy(p.best_state),
            last_state=_cpu_state(student),
            best_epoch=p.best_epoch,
            # NaN when no epoch had a validation score (e.g. data-free: no real images)
            best_val_acc=self.selection.score(p.best_val) if p.best_epoch else float("nan"),
            last_val_acc=p.history[-1][self.selection.name] if p.history else float("nan"),
            train_seconds=p.elapsed,
            history=p.history,
            resumed_from_epoch=start_epoch,
        )


def planned_steps(recipe, n_rows: int) -> int:
    """How many optimiser steps ``fit`` takes on ``n_rows`` training rows with ``recipe``
    (batches per epoch, capped by ``steps_per_epoch`` when set, times the epochs)."""
    per_epoch = -(-n_rows // recipe.batch_size)
    if recipe.steps_per_epoch > 0:
        per_epoch = min(per_epoch, recipe.steps_per_epoch)
    return recipe.epochs * per_epoch


def _usable_cache(
    cache: torch.Tensor | RowCache | None, data: DataBundle, stage: str, train_idx: torch.Tensor
) -> RowCache | None:
    """The teacher cache if it can be used for this data (never with augmentation)."""
    if cache is None or data.augment:
        return None
    if isinstance(cache, torch.Tensor):
        cache = RowCache.full(cache)
    if len(cache) != len(data.x_train) or not cache.covers(train_idx):  # never misaligned
        raise TrainingError(
            f"{stage}: the teacher cache does not cover the training rows ({len(cache)} rows "
            f"for a split of {len(data.x_train)}); it is stale: delete it from the store"
        )
    return cache


def fit(
    distiller: nn.Module,
    data: DataBundle,
    recipe,
    *,
    stage: str,
    seed: int,
    train_idx: torch.Tensor,
    val_idx: torch.Tensor,
    teacher_cache: torch.Tensor | RowCache | None = None,
    checkpoint: Path | None = None,
    fingerprint: str = "",
    amp: str = "off",
    eval_batch_size: int = 1024,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    on_step: Callable[[], None] | None = None,
    on_start: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    resume: bool = True,
    perf: Perf | None = None,
    val_score: ValScore = val_accuracy,
    selection: Selection = Selection(),
) -> FitResult:
    """Train ``distiller``'s trainable parameters; select ``distiller.student`` on validation.

    ``teacher_cache`` holds per-sample teacher outputs indexed like ``data.x_train``; it is
    used only when the batch is not augmented (an augmented batch needs a fresh teacher pass,
    which the distiller does itself when given ``teacher_out=None``).
    ``checkpoint``: resume from it (unless ``resume`` is False) if it exists with the same
    ``fingerprint``; rewritten atomically at each epoch end and when a stop is requested.
    ``on_start(first_epoch, epochs)``: once, after a resume (a progress bar starts there).
    ``perf``: speed switches (kdrun.engine.perf). ``val_score``: the selection score on
    validation (the task's; accuracy by default), ``selection`` its name and direction.
    """
    perf = perf or Perf()
    if getattr(recipe, "augment", None) is not None:  # the stage's own switch wins
        data = replace(data, augment=bool(recipe.augment))
    t = _Trainer(distiller, data, recipe, stage, seed, amp, perf, checkpoint, fingerprint)
    t.val_score, t.selection = val_score, selection
    if resume:
        t.resume()
    start_epoch = t.progress.epoch
    if on_start is not None:
        on_start(start_epoch, recipe.epochs)
    cache = _usable_cache(teacher_cache, data, stage, train_idx)
    perf.prepare_distiller(distiller)
    t.model = wrap(distiller, t.dist, t.device, t.dist.sync_bn)
    for epoch in range(start_epoch, recipe.epochs):
        ep = t.begin_epoch(train_idx)
        batches = merge_short_tail(list(ep.order.split(recipe.batch_size)), t.dist.world_size)
        for b in range(ep.first, len(batches)):
            if t.should_stop(should_stop):
                raise t.stop(epoch, ep, b, len(batches))
            t.step(batches[b], ep, cache)
            if on_step is not None:
                on_step()
        row = t.end_epoch(epoch, ep, val_idx, eval_batch_size)
        if on_epoch is not None:
            on_epoch(row)
    return t.result(start_epoch)
