"""Bookkeeping around one job: status in metrics.json, one-line errors, clean interruption."""

from __future__ import annotations

import datetime as _dt
import json
import logging
import platform
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from kdrun.config import validate
from kdrun.errors import Interrupted, KdrunError
from kdrun.report import Reporter, results_table, write_history
from kdrun.store import atomic_write_json

log = logging.getLogger("kdrun")

# Keys that do not change results: a rerun that differs only in these is the same job.
VOLATILE_KEYS = ("runtime", "resume", "debug")


# Set when a job of a sweep is interrupted: the remaining jobs of this process do not start.
_SWEEP = {"stopped": False}


def versions() -> dict[str, str]:
    import hydra
    import numpy
    import torch
    import torchvision

    from kdrun import __version__

    return {
        "kdrun": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
        "hydra": hydra.__version__, "numpy": numpy.__version__,
        "python": platform.python_version(), "platform": platform.platform(),
    }  # fmt: skip


def _result_config(cfg: DictConfig) -> dict[str, Any]:
    c = OmegaConf.to_container(cfg, resolve=True)
    for k in VOLATILE_KEYS:
        c.pop(k, None)
    return c


def make_console() -> Console:
    """A console that does not squeeze tables to 80 columns when output is piped to a file."""
    c = Console()
    return c if c.is_terminal else Console(width=max(c.width, 120))


def read_metrics(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


class StopFlag:
    """SIGINT/SIGTERM set a flag; the training loop stops at the next batch boundary."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopFlag:
        for s in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread (e.g. some launchers): no handler
                pass
        return self

    def _handle(self, signum, frame) -> None:
        if self.signal is not None:  # second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.signal = signum

    def __call__(self) -> bool:
        return self.signal is not None

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


def run_job(cfg: DictConfig, run_dir: Path, multirun: bool = False) -> int:
    """Run one job in ``run_dir``; return its exit code. Never raises for a KdrunError."""
    from kdrun.pipeline import run_pipeline

    console = make_console()
    run_dir.mkdir(parents=True, exist_ok=True)
    mpath = run_dir / "metrics.json"
    result_cfg = _result_config(cfg)
    previous = read_metrics(mpath)
    if previous and previous.get("config") not in (None, result_cfg):
        if previous.get("status") == "completed":
            console.print(
                f"[red]kdrun: error:[/] {run_dir} already holds a completed run of another "
                f"config; choose a new hydra.run.dir (nothing was changed)"
            )
            return 2
    if previous and previous.get("status") == "completed" and cfg.resume:
        console.print(f"kdrun: {run_dir} is already completed; showing its results (resume=false "
                      f"in a new directory reruns it)")  # fmt: skip
        console.print(results_table(previous))
        return 0

    if multirun and _SWEEP["stopped"]:  # Ctrl-C stops the sweep, not only the current job
        atomic_write_json({"status": "interrupted", "T": cfg.T, "alpha": cfg.alpha,
                           "seed": cfg.seed, "run_dir": str(run_dir),
                           "error": "not run: the sweep was interrupted before this job"},
                          mpath)  # fmt: skip
        return Interrupted.exit_code
    base: dict[str, Any] = {
        "status": "running",
        "dataset": cfg.dataset.name, "method": cfg.method.name, "T": cfg.T, "alpha": cfg.alpha,
        "seed": cfg.seed, "experiment": cfg.get("experiment"), "run_dir": str(run_dir),
        "started_at": _dt.datetime.now().isoformat(timespec="seconds"),
        "versions": versions(), "config": result_cfg,
    }  # fmt: skip
    t0 = time.perf_counter()

    def finish(status: str, **extra: Any) -> None:
        doc = {**base, **extra, "status": status, "wall_seconds": time.perf_counter() - t0,
               "finished_at": _dt.datetime.now().isoformat(timespec="seconds")}  # fmt: skip
        atomic_write_json(doc, mpath)

    try:
        validate(cfg)
        atomic_write_json(base, mpath)
        progress = {"on": True, "off": False}.get(cfg.runtime.progress)
        if progress is None:
            progress = console.is_terminal and not multirun
        with StopFlag() as stop:
            m = run_pipeline(cfg, run_dir, Reporter(console, progress), should_stop=stop)
        history = m.pop("_history")
        m.pop("_config")
        write_history(history, run_dir / "history.csv")
        finish("completed", **m)
        console.print(results_table({**base, **m}))
        console.print(f"[dim]results: {mpath}[/]")
        return 0
    except Interrupted as e:
        _SWEEP["stopped"] = multirun
        finish("interrupted", error=str(e))
        again = f"with hydra.sweep.dir={run_dir.parent} " if multirun else ""
        console.print(f"[yellow]kdrun: interrupted:[/] {e}; rerun the same command {again}to "
                      f"resume")  # fmt: skip
        return e.exit_code
    except KdrunError as e:
        finish("failed", error=str(e), error_type=type(e).__name__)
        print(f"kdrun: error: {e}", file=sys.stderr)
        return e.exit_code
    except Exception as e:  # a bug or an unforeseen failure: still one line, still recorded
        finish("failed", error=f"{type(e).__name__}: {e}", error_type=type(e).__name__,
               traceback=traceback.format_exc())  # fmt: skip
        if cfg.get("debug"):
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        print(f"kdrun: error: {type(e).__name__}: {first} (debug=true shows the traceback; it is "
              f"also in {mpath})", file=sys.stderr)  # fmt: skip
        return 1
