"""The from-scratch baseline in a second process, beside the distilled student.

The baseline and the distilled student are independent trainings of the same small model from
the same initial weights. On a CPU such a model's step rarely uses a second core well (the
Fashion-MNIST MLP: 1.43 ms on 1 thread, 1.12 ms on 2), so two of them side by side, one
thread each, finish in about the time of one. With ``runtime.parallel_baseline=auto`` a job
on a CPU with two or more threads trains the baseline in a spawned process (1 thread) while
it trains the student (the other threads), when the baseline is not already stored and would
take long enough to pay for starting a Python process and loading the data again.

The child builds the baseline through the artifact store, under its lock, exactly as the job
would (same store key, initial weights, batch order); the job then loads it from the store.
If the child fails, the job trains the baseline itself: nothing is lost but time.
"""

from __future__ import annotations

import io
import logging
import multiprocessing as mp
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from kdrun.config import to_container
from kdrun.engine.device import seconds_per_step, set_threads, training_step_probe
from kdrun.engine.loop import planned_steps
from kdrun.engine.perf import bundle_bytes
from kdrun.experiments.context import JobContext
from kdrun.report.run import Reporter

log = logging.getLogger("kdrun")

# The baseline must be expected to train for this long before a second process is worth it
# (starting Python and torch and loading the data again take a few seconds).
MIN_SECONDS = 30.0
# The child loads the data again: with auto, not when that would hold a second copy this big.
MAX_DATA_BYTES = 1 << 30


@dataclass
class Aside:
    """A baseline training in a second process."""

    proc: Any  # multiprocessing's SpawnProcess
    result: Any  # a SimpleQueue: the child's outcome
    t0: float
    history_at: int  # where the baseline's rows go in the job's history (before the student's)
    reclaimed_at: int | None = None  # the student's epoch after which the job took its thread back
    rows: threading.Thread | None = None  # shows the child's epoch rows as they arrive


def wanted(p: JobContext, est_seconds: float | None = None) -> bool:
    """Whether job ``p`` should train its baseline aside: ``on`` whenever the
    job runs on a CPU with >= 2 threads in one process; ``auto`` also needs auto thread
    counts, no runtime.deterministic, a baseline not yet stored, data under MAX_DATA_BYTES
    and an expected training time >= MIN_SECONDS (``est_seconds``; measured when not
    given)."""
    rt = p.cfg.runtime
    mode = str(rt.parallel_baseline)
    if mode == "off" or not p.cfg.baseline:
        return False
    if p.device.type != "cpu" or p.dist.enabled or p.thread_budget < 2:
        return False
    auto = mode == "auto"
    if auto and (not p.threads.adaptive or rt.deterministic):
        return False
    if auto and _data_bytes(p) > MAX_DATA_BYTES:
        return False
    # the store lookup reads and checks the payload: after the checks that cost nothing
    if p.store.has("baseline", p.baseline_spec()[0]):
        return False
    if not auto:
        return True
    est = _expected_seconds(p) if est_seconds is None else est_seconds
    return est >= MIN_SECONDS


def _data_bytes(p: JobContext) -> int:
    """The job's data in memory (what the child would load a second copy of)."""
    return bundle_bytes(p.data)


def _expected_seconds(p: JobContext) -> float:
    """The baseline's training time at one thread: a timed step times its step count."""
    train = p.cfg.student.train
    try:
        with torch.random.fork_rng(devices=[]):  # the job's random state stays as it was
            model = p.new_student()
            x = p.data.x_train[: train.batch_size]
            secs = seconds_per_step(training_step_probe(model, x), [1], reps=2)[1]
    except Exception as e:  # a model the probe cannot drive: train it in the job
        log.debug("baseline time estimate failed (%s)", e)
        return 0.0
    # forward+backward only; the optimiser step and the loop's bookkeeping add about as much
    return 1.5 * secs * planned_steps(train, len(p.data.student_idx))


def start(p: JobContext, child: Callable[[dict[str, Any], str, Any, Any], None]) -> Aside:
    """Spawn the process that trains ``p``'s baseline into the store (1 thread). ``child``: a
    module-level function (spawn imports it by name) that calls ``run_child`` with the
    context class to build the baseline with. Its epoch rows come back through a pipe and
    are shown by the job's reporter as they arrive (a bar, or the epoch lines)."""
    ctx = mp.get_context("spawn")  # never fork a process whose OpenMP threads have run
    result = ctx.SimpleQueue()
    rows_in, rows_out = ctx.Pipe(duplex=False)
    container = to_container(p.cfg)
    proc = ctx.Process(
        target=child, args=(container, str(p.run_dir), result, rows_out), name="kdrun-baseline"
    )
    proc.daemon = True  # ends with the job
    proc.start()
    rows_out.close()  # the child holds the only writing end: its exit ends the reading
    p.reporter.side_stage("baseline", int(p.cfg.student.train.epochs))
    shower = threading.Thread(
        target=_show_rows, args=(rows_in, p.reporter), name="kdrun-baseline-rows", daemon=True
    )
    shower.start()
    log.info("baseline: training in a second process (1 thread) beside the student")
    return Aside(proc, result, time.perf_counter(), len(p.history), rows=shower)


def _show_rows(rows_in: Any, reporter: Reporter) -> None:
    """The reading end of the child's rows: each goes to the reporter, until the child's
    end closes (a child that dies closes it too, so this never outlives it)."""
    try:
        while True:
            try:
                stage, row = rows_in.recv()
            except (EOFError, OSError):
                return
            try:
                reporter.side_row(stage, row)
            except Exception as e:  # showing progress never fails the job
                log.debug("baseline row not shown (%s)", e)
    finally:
        rows_in.close()


def _rows_done(aside: Aside) -> None:
    """After the child has exited: its last rows shown (bounded: a wedged reader is left)."""
    if aside.rows is not None:
        aside.rows.join(timeout=5.0)


def reclaiming(
    hooks: dict[str, Any], aside: Aside, reclaim: Callable[[], dict[str, Any]]
) -> dict[str, Any]:
    """The student stage's ``hooks``, checking at each epoch end whether the child has exited;
    the first time it has, ``reclaim()`` gives the job its thread back and returns the hooks
    for the rest of the stage (a student on 1 thread beside a short baseline would otherwise
    keep 1 thread to the end)."""
    live = dict(hooks)

    def on_step() -> None:
        if live.get("on_step") is not None:
            live["on_step"]()

    def on_epoch(row: dict[str, Any]) -> None:
        if live.get("on_epoch") is not None:
            live["on_epoch"](row)
        if aside.reclaimed_at is None and not aside.proc.is_alive():
            aside.reclaimed_at = int(row["epoch"])
            live.update(reclaim())

    return {**hooks, "on_step": on_step, "on_epoch": on_epoch}


def finish(p: JobContext, aside: Aside) -> torch.nn.Module:
    """Wait for the child and return the baseline (from the store); trained here instead
    if the child failed."""
    waited = time.perf_counter()
    with p.reporter.side_wait("baseline"):
        aside.proc.join()
        _rows_done(aside)
    outcome = aside.result.get() if not aside.result.empty() else None
    ok = aside.proc.exitcode == 0 and isinstance(outcome, dict) and outcome.get("ok")
    n = len(p.history)
    if ok:
        model = p.baseline(trained_aside=not outcome["from_store"])
        p.stage_threads["baseline"] = 1
    else:
        why = outcome.get("error") if isinstance(outcome, dict) else None
        why = why or f"exit code {aside.proc.exitcode}"
        log.warning("baseline: its second process failed (%s); training it here", why)
        model = p.baseline()
    rows = p.history[n:]
    del p.history[n:]
    p.history[aside.history_at : aside.history_at] = rows
    now = time.perf_counter()
    p.baseline_aside = {
        "ok": bool(ok),
        # the child's own time (after Python and torch started); the job's wait if it failed
        "seconds": outcome["seconds"] if ok else round(now - aside.t0, 1),
        "waited_seconds": round(now - waited, 1),  # how long the job waited for it
        "threads_back_after_epoch": aside.reclaimed_at,  # the student's; None: not before its end
    }
    return model


def stop(aside: Aside) -> None:
    """End the child (the job failed or was interrupted); its last epoch-end checkpoint in the
    store is kept, so the baseline resumes from there next time."""
    if aside.proc.is_alive():
        aside.proc.terminate()
    aside.proc.join()
    _rows_done(aside)


def _log_to(path: Path) -> None:
    """The child's log lines go to the job's log; its epoch lines do not: the job shows and
    logs those (they reach it through the rows pipe)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)  # appends, as the job's own handler does
    fmt = "[%(asctime)s][kdrun aside][%(levelname)s] - %(message)s"
    handler.setFormatter(logging.Formatter(fmt))
    handler.addFilter(lambda record: not getattr(record, "epoch_row", False))
    log.addHandler(handler)
    log.setLevel(logging.INFO)


def _sender(rows_out: Any) -> Callable[[str, dict[str, Any]], None]:
    """The child's ``on_row``: each epoch's row to the job (a job gone: the training goes on)."""

    def send(stage: str, row: dict[str, Any]) -> None:
        try:
            rows_out.send((stage, dict(row)))
        except (OSError, ValueError) as e:
            log.debug("baseline row not sent (%s)", e)

    return send


def run_child(
    container: dict[str, Any], run_dir: str, result: Any, rows_out: Any, context_cls: type
) -> None:
    """The second process: the baseline through the store, one thread, no console output;
    its epoch rows go to the job through ``rows_out``."""
    # Ctrl-C reaches the whole process group: the job decides, and terminates this one.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    set_threads(1)
    t0 = time.perf_counter()
    _log_to(Path(run_dir) / "kdrun.log")
    try:
        cfg: DictConfig = OmegaConf.create(container)
        reporter = Reporter(Console(file=io.StringIO()), progress=False, on_row=_sender(rows_out))
        p = context_cls(cfg, Path(run_dir), torch.device("cpu"), reporter)
        p.baseline()
        seconds = round(time.perf_counter() - t0, 1)
        result.put(
            {"ok": True, "from_store": p.from_store.get("baseline", False), "seconds": seconds}
        )
    except BaseException as e:  # reported to the job, which trains the baseline itself
        result.put({"ok": False, "error": f"{type(e).__name__}: {e}"})
        raise SystemExit(1) from None
