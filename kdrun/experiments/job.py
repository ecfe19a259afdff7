"""Bookkeeping around one job: status in metrics.json, one-line errors, clean interruption."""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import logging
import platform
import shlex
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import hydra
import numpy
import torch
from filelock import FileLock, Timeout
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from kdrun import __version__
from kdrun.config import to_container
from kdrun.engine import distributed as dist_
from kdrun.engine import resolve_device
from kdrun.errors import Interrupted, KdrunError, find_os_error, os_error_message
from kdrun.experiments.checks import validate
from kdrun.experiments.kinds import run_kind
from kdrun.report import Reporter, results_table, round_floats, write_history
from kdrun.report.files import make_console, read_metrics
from kdrun.runlog import to_log, warnings_logged
from kdrun.store import atomic_write_json
from kdrun.tasks import TASKS
from kdrun.trackers import Trackers, make_trackers

log = logging.getLogger("kdrun")

# Keys that do not change results: a rerun that differs only in these is the same job.
# (device too: a job moved from cuda to cuda:1, or to another node, is the same job)
VOLATILE_KEYS = ("runtime", "resume", "debug", "device", "logger", "optimized_metric")


def versions() -> dict[str, str]:
    try:  # from the metadata: importing torchvision just for its version costs seconds
        tv = importlib.metadata.version("torchvision")
    except importlib.metadata.PackageNotFoundError:
        tv = "absent"
    return {
        "kdrun": __version__,
        "torch": torch.__version__,
        "torchvision": tv,
        "hydra": hydra.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _result_config(cfg: DictConfig) -> dict[str, Any]:
    c = OmegaConf.to_container(cfg, resolve=True)
    for k in VOLATILE_KEYS:
        c.pop(k, None)
    return c


def run_table(m: dict[str, Any]):
    """The run table with the columns of the run's task (classification for older runs)."""
    task = TASKS.get(m.get("task") or "classify")
    if task is None:
        return results_table(m)
    return results_table(m, task.columns, task.gain_text)


class TrialFailed(KdrunError):
    """A search's trial whose job did not complete: the sweeper records it as failed."""


def search_objective(run_dir: Path, key: str) -> float:
    """The number a search maximises for the job in ``run_dir``: ``key`` (dotted) of its
    metrics.json, e.g. student.val_acc. A job that did not complete raises TrialFailed."""
    m = read_metrics(run_dir / "metrics.json") or {}
    if m.get("status") != "completed":
        raise TrialFailed(f"{run_dir}: {m.get('error') or 'the job did not complete'}")
    value: Any = m
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TrialFailed(f"{run_dir}: metrics.json has no number at {key} (optimized_metric)")
    return float(value)


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


def _err(msg: str) -> None:
    """The one line a failed job leaves on stderr (a table or a log may precede it on stdout)."""
    line = f"kdrun: error: {dist_.rank_tag()}{msg}"
    print(line, file=sys.stderr, flush=True)
    to_log(line, logging.ERROR)


def resume_hint(run_dir: Path) -> str:
    return f"kdrun resume {shlex.quote(str(run_dir))}"


def run_job(
    cfg: DictConfig, run_dir: Path, multirun: bool = False, command: dict | None = None
) -> int:
    """Run one job in ``run_dir``; return its exit code. Never raises for a KdrunError.

    ``command`` (the overrides that made it) is recorded for ``kdrun resume``.
    Exit codes: 0 completed (or already completed), 1 unexpected error, 2 bad input or
    environment, 3 training diverged, 130 stopped by SIGINT/SIGTERM.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    if dist_.env_from().rank != 0:  # the ranks of one DDP job share it; rank 0 holds the lock
        return _run_job(cfg, run_dir, multirun, command)
    # One process per run directory: a second one would interleave checkpoints and metrics.
    lock = FileLock(str(run_dir / ".kdrun.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        _err(
            f"another kdrun process is running in {run_dir}; wait for it or choose another "
            f"hydra.run.dir"
        )
        return 2
    try:
        return _run_job(cfg, run_dir, multirun, command)
    finally:
        lock.release()


def _previous_run(
    cfg: DictConfig, run_dir: Path, multirun: bool, result_cfg: dict, console: Console
) -> int | None:
    """What an earlier run in ``run_dir`` decides: an exit status if this job must not run
    (already completed, or another config's results would be overwritten), else None."""
    previous = read_metrics(run_dir / "metrics.json")
    prev_status = previous.get("status") if previous else None
    same = previous is not None and previous.get("config") in (None, result_cfg)
    partial = run_dir / "checkpoints" / "student.partial.pt"
    if prev_status == "completed":
        if not same:
            _err(
                f"{run_dir} already holds a completed run of another config; choose a new "
                f"hydra.run.dir (nothing was changed)"
            )
            return 2
        if not cfg.resume:
            _err(
                f"{run_dir} already holds this completed run and resume=false would overwrite "
                f"it; choose a new hydra.run.dir (nothing was changed)"
            )
            return 2
        if multirun:
            console.print(f"kdrun: {run_dir} is already completed; skipped")
        else:
            console.print(f"kdrun: {run_dir} is already completed; showing its results")
            console.print(run_table(previous))
        return 0
    if prev_status in ("interrupted", "running") and not same and partial.is_file() and cfg.resume:
        _err(
            f"{run_dir} holds an unfinished run ({prev_status}) of another config; resume it "
            f"with `{resume_hint(run_dir)}`, discard it with resume=false, or choose a new "
            f"hydra.run.dir"
        )
        return 2
    return None


def _now() -> str:
    return _dt.datetime.now().isoformat(timespec="seconds")


class _Record:
    """metrics.json of one job: written at the start (running) and at the end (any status)."""

    def __init__(self, cfg: DictConfig, run_dir: Path, result_cfg: dict, command: dict | None):
        self.path = run_dir / "metrics.json"
        self.main = dist_.env_from().rank == 0  # in a DDP job rank 0 writes for all ranks
        self.trackers = Trackers()
        self.t0 = time.perf_counter()
        self.base: dict[str, Any] = {
            "status": "running",
            "dataset": cfg.dataset.name,
            "method": cfg.method.name,
            "T": cfg.T,
            "alpha": cfg.alpha,
            "seed": cfg.seed,
            "experiment": cfg.get("experiment"),
            "run_dir": str(run_dir),
            "started_at": _now(),
            "versions": versions(),
            "config": result_cfg,
            "command": command,
        }

    def start(self) -> None:
        if self.main:
            atomic_write_json(self.base, self.path)

    def completed(self, m: dict[str, Any]) -> None:
        if not self.main:
            return
        atomic_write_json(
            {
                **self.base,
                **round_floats(m),  # results only: the config is stored as given
                "status": "completed",
                "wall_seconds": round_floats(time.perf_counter() - self.t0),
                "finished_at": _now(),
            },
            self.path,
        )

    def finish(self, status: str, **extra: Any) -> None:
        self.trackers.close(status)
        if not self.main:
            return
        doc = {
            **self.base,
            **extra,
            "status": status,
            "wall_seconds": round_floats(time.perf_counter() - self.t0),
            "finished_at": _now(),
        }
        try:
            atomic_write_json(doc, self.path)
        except OSError as e:  # e.g. the disk is full: say so, but do not hide the first error
            log.warning("could not record status %s in %s: %s", status, self.path, e)


def _execute(
    cfg: DictConfig, run_dir: Path, multirun: bool, rec: _Record, console: Console, stop: StopFlag
) -> int:
    """Validate, run the experiment, write its results; exceptions go to the caller."""
    validate(cfg)
    dist = _join(cfg)
    rec.start()
    progress = {"on": True, "off": False}.get(cfg.runtime.progress)
    if progress is None:
        progress = console.is_terminal and not multirun
    rec.trackers = make_trackers(to_container(cfg.logger), enabled=dist.is_main)
    rec.trackers.start(_run_name(run_dir), rec.base["config"], {"run_dir": str(run_dir)})
    reporter = Reporter(console, progress and dist.is_main, on_row=rec.trackers.log_epoch)
    with stop:
        m = run_kind(cfg, run_dir, reporter, should_stop=stop)
    history = m.pop("_history")
    for row in history:  # stages loaded from the store: their stored epochs, once
        if row.get("from_store"):
            rec.trackers.log_epoch(row["stage"], row)
    if dist.is_main:
        write_history(history, run_dir / "history.csv")
    rec.completed(m)
    rec.trackers.log_final({**rec.base, **m})
    rec.trackers.log_artifact(run_dir / "checkpoints" / "student.pt")
    rec.trackers.close("completed")
    dist.barrier()  # every rank returns after metrics.json is whole
    if not dist.is_main:
        return 0
    # Only now: until metrics.json is whole, the student's checkpoint resumes it.
    (run_dir / "checkpoints" / "student.partial.pt").unlink(missing_ok=True)
    console.print(run_table({**rec.base, **m}))
    console.print(f"[dim]results: {rec.path}[/]")
    if stop():  # the stop came after the last batch: the run is whole, the command stops
        _err("stopped by a signal after the run completed; its results are recorded")
        return Interrupted.exit_code
    return 0


def _join(cfg: DictConfig) -> dist_.Dist:
    """Join the job's process group (a no-op for one process) and check what depends on it."""
    rt = cfg.runtime
    sizes = {"teacher": cfg.teacher.train.batch_size, "student": cfg.student.train.batch_size}
    dist_.check_world(dist_.env_from().world_size, sizes)  # before waiting for the others
    dist, _ = dist_.init(
        resolve_device(cfg.device), rt.dist_backend, timeout_s=rt.dist_timeout_s, sync_bn=rt.sync_bn
    )
    if not dist.is_main:  # one log for the job: rank 0's (errors still come from every rank)
        logging.getLogger("kdrun").setLevel(logging.WARNING)
    return dist


def _run_name(run_dir: Path) -> str:
    """A tracker's name for the run: the last parts of its directory (date/time[/job])."""
    return "/".join(run_dir.resolve().parts[-3:])


def _failed(e: Exception, cfg: DictConfig, rec: _Record) -> int:
    """Record an unexpected failure and print its one line (debug=true re-raises)."""
    os_err = find_os_error(e)
    known = os_error_message(os_err) if os_err is not None else None
    if known is not None:  # disk full, read-only, ...: the environment, not a bug
        rec.finish("failed", error=known, error_type=type(os_err).__name__)
        _err(known)
        return 2
    rec.finish(
        "failed",
        error=f"{type(e).__name__}: {e}",
        error_type=type(e).__name__,
        traceback=traceback.format_exc(),
    )
    if cfg.get("debug"):
        raise e
    to_log(traceback.format_exc().rstrip(), logging.ERROR)  # the screen gets one line
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    _err(f"{type(e).__name__}: {first} (debug=true shows the traceback; it is also in {rec.path})")
    return 1


def _run_job(cfg: DictConfig, run_dir: Path, multirun: bool, command: dict | None) -> int:
    console = make_console()
    if dist_.env_from().rank != 0:
        console.quiet = True  # rank 0 prints the job's tables
    result_cfg = _result_config(cfg)
    code = _previous_run(cfg, run_dir, multirun, result_cfg, console)
    if code is not None:
        return code
    rec = _Record(cfg, run_dir, result_cfg, command)
    try:
        with warnings_logged():
            return _execute(cfg, run_dir, multirun, rec, console, StopFlag())
    except (Interrupted, KeyboardInterrupt) as e:
        msg = str(e) if isinstance(e, Interrupted) else "stopped by a second Ctrl-C"
        rec.finish("interrupted", error=msg)
        hint = "" if multirun else f"; resume with: {resume_hint(run_dir)}"  # sweeps: cli
        env = dist_.env_from()
        if env.world_size > 1:  # every rank stopped at the same batch: rank 0 says so
            hint = "; resume by rerunning the same command (or on one process: kdrun resume)"
        if env.rank == 0:
            print(f"kdrun: interrupted: {msg}{hint}", file=sys.stderr, flush=True)
            to_log(f"kdrun: interrupted: {msg}{hint}", logging.WARNING)
        return Interrupted.exit_code
    except KdrunError as e:
        rec.finish("failed", error=str(e), error_type=type(e).__name__)
        _err(str(e))
        return e.exit_code
    except Exception as e:  # a bug or an unforeseen failure: still one line, still recorded
        return _failed(e, cfg, rec)
