"""The condensation loop: iterations of a Condenser, checkpointed so a killed run resumes.

The checkpoint (written atomically every ``checkpoint_every`` iterations and when a stop is
requested) holds the images, the pixel optimiser, the generator state and the loss history;
resuming from it continues the same random path, so the result equals an uninterrupted run's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from kdrun.condense.matching import CONDENSERS, NetFactory
from kdrun.condense.options import CondenseConfig
from kdrun.condense.synthetic import class_rows, initial_images
from kdrun.errors import CheckpointError, Interrupted, TrainingError
from kdrun.store import atomic_torch_save, load_weights

log = logging.getLogger("kdrun")


@dataclass
class CondenseResult:
    images: torch.Tensor
    labels: torch.Tensor
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    resumed_from: int = 0


def _load(ckpt: Path | None, fingerprint: str) -> dict | None:
    if ckpt is None or not ckpt.is_file():
        return None
    try:
        state = load_weights(ckpt)
    except Exception as e:
        raise CheckpointError(
            f"checkpoint {ckpt} is unreadable ({e}); delete it to restart condensation"
        ) from None
    return state if state.get("fingerprint") == fingerprint else None


def _resume(
    cond: Any, gen: torch.Generator, checkpoint: Path | None, fingerprint: str
) -> tuple[int, list[float], float]:
    """The images, optimiser and generator of a matching checkpoint put back; the iteration,
    losses and seconds to go on from (0, [], 0.0 without one)."""
    state = _load(checkpoint, fingerprint)
    if state is None:
        return 0, [], 0.0
    with torch.no_grad():
        cond.images.copy_(state["images"].to(cond.images.device))
    cond.opt.load_state_dict(state["optimizer"])
    gen.set_state(state["gen"])
    log.info("condense: resuming from %s at iteration %d", checkpoint, state["iteration"])
    return state["iteration"], list(state["losses"]), state["seconds"]


def condense_images(
    opts: CondenseConfig,
    make_net: NetFactory,
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    seed: int,
    checkpoint: Path | None = None,
    fingerprint: str = "",
    should_stop: Callable[[], bool] | None = None,
    on_iteration: Callable[[int, float], None] | None = None,
) -> CondenseResult:
    """Learn ``opts.ipc`` images per class from the real (x, y) with ``opts.method``."""
    gen = torch.Generator().manual_seed(seed)
    rows = class_rows(y, num_classes)
    images = initial_images(x, rows, opts.ipc, opts.init, gen)
    labels = torch.arange(num_classes, device=x.device).repeat_interleave(opts.ipc)
    cond = CONDENSERS[opts.method](opts, make_net, x, rows, images, gen)
    start, losses, seconds = _resume(cond, gen, checkpoint, fingerprint)

    def save(it: int) -> None:
        if checkpoint is not None:
            atomic_torch_save(
                {
                    "fingerprint": fingerprint,
                    "iteration": it,
                    "images": cond.images.detach().cpu(),
                    "optimizer": cond.opt.state_dict(),
                    "gen": gen.get_state(),
                    "losses": losses,
                    "seconds": seconds,
                },
                checkpoint,
            )

    for it in range(start, opts.iterations):
        if should_stop is not None and should_stop():
            save(it)
            raise Interrupted(
                f"condense stopped at iteration {it}/{opts.iterations}; "
                f"checkpoint saved in {checkpoint}"
            )
        t0 = time.perf_counter()
        loss = cond.step()
        if not torch.isfinite(cond.images).all() or loss != loss:
            raise TrainingError(
                f"condense: images became NaN/inf at iteration {it + 1}; "
                f"lower condense.lr_img and rerun"
            )
        losses.append(loss)
        seconds += time.perf_counter() - t0
        if on_iteration is not None:
            on_iteration(it + 1, loss)
        if (it + 1) % max(1, opts.checkpoint_every) == 0:
            save(it + 1)
    return CondenseResult(cond.images.detach().clone(), labels, losses, seconds, start)
