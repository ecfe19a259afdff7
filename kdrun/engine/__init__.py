"""The engine: the one training loop, checkpoints and resume, evaluation, device and speed."""

from kdrun.engine.checkpoint import seed_everything
from kdrun.engine.device import calibrated_threads, effective_amp, resolve_device, set_threads
from kdrun.engine.evaluate import accuracy, autocast_context, predict
from kdrun.engine.loop import (
    FitResult,
    Selection,
    ValScore,
    fit,
    planned_steps,
    val_accuracy,
)
from kdrun.engine.optim import lr_factor, make_optimizer
from kdrun.engine.perf import Perf, RowCache, data_device, fetch, place_data
from kdrun.engine.threads import ThreadGovernor, governed

__all__ = [
    "FitResult",
    "Perf",
    "RowCache",
    "Selection",
    "ThreadGovernor",
    "accuracy",
    "autocast_context",
    "calibrated_threads",
    "data_device",
    "effective_amp",
    "fetch",
    "fit",
    "governed",
    "lr_factor",
    "make_optimizer",
    "place_data",
    "planned_steps",
    "predict",
    "resolve_device",
    "seed_everything",
    "set_threads",
    "val_accuracy",
    "ValScore",
]
