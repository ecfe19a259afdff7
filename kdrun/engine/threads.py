"""How many threads each stage of a job trains on.

By default (``runtime.num_threads=auto`` or N) every stage trains on the job's count, decided
by rules that read no clock (kdrun.engine.device.auto_threads: affinity, cgroup quota,
SLURM_CPUS_PER_TASK, the joblib launcher's n_jobs) and fixed while the stage runs: float sums
are ordered by the thread count, so a count chosen by timing would make the numbers depend
on the machine's load. ``runtime.num_threads=adaptive`` opts into the timing-driven features
below, faster on a shared machine and not repeatable bit for bit.

Re-deciding the thread count while a stage trains (adaptive only): 1 thread or the whole
budget. The calibration (device.calibrated_threads) picks a stage's starting count once per machine
and model, but the machine's load changes later. On a 2-core EPYC with bounded OpenMP
spinning (kdrun/__init__.py), 2 threads trained the Fashion-MNIST CNN teacher 1.55x faster
than 1 when idle and 3x slower as soon as one other CPU-bound process ran. So the governor
times the training steps in windows and keeps the faster count, trying the other one again
for one window whenever its last measurement is older than ``explore_s``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdrun.engine.device import calibrated_threads, set_threads

# The budget must be this many times faster than 1 thread to be kept. A small margin, unlike
# the calibration's 1.3 (a one-off choice kept under any later load): the count is measured
# again every explore_s. It keeps near-ties on 1 thread, which leaves a core to the machine's
# other processes, and does not switch on the noise of a 2 s window.
MARGIN = 1.1
# Kept on the budget, a window this much slower than 1 thread's leaves it at once; a smaller
# loss must be seen in two windows in a row (measured: single 2 s windows of an MLP step
# varied by ~15%, and the governor spent half of a stage on the slower count without this).
LEAVE_AT_ONCE = 1.3


class ThreadGovernor:
    """Call ``on_step`` after every training step and ``on_epoch`` at every epoch end (the
    epoch-end work, e.g. validation, is not step time). Only step time is timed: a window
    of at least ``window_s`` seconds of steps gives the seconds per step of the thread count
    in force; at each window end the governor explores or takes the faster count."""

    def __init__(
        self,
        budget: int,
        start: int,
        window_s: float = 2.0,
        explore_s: float = 30.0,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if start not in (1, budget):
            raise ValueError(f"start={start}: the governor chooses between 1 and {budget}")
        self.budget, self.window_s, self.explore_s, self.clock = budget, window_s, explore_s, clock
        self.current = start
        self.switches = 0
        self._strikes = 0  # windows in a row in which the budget lost to 1 thread
        self._exploring = False  # the window in progress tries the other count
        self._last: float | None = None  # end of the previous step; None: not timing yet
        self._win_s, self._win_steps = 0.0, 0
        self._measured: dict[int, tuple[float, float]] = {}  # count -> (sec/step, when)
        self._totals = {n: [0.0, 0] for n in {1, budget}}  # count -> [seconds, steps]
        if torch.get_num_threads() != start:
            torch.set_num_threads(start)

    def on_step(self) -> None:
        now = self.clock()
        if self._last is not None:
            self._win_s += now - self._last
            self._win_steps += 1
            if self._win_s >= self.window_s:
                self._end_window(now)
                now = self.clock()  # a switch is not the next step's time
        self._last = now

    def on_epoch(self, row: Any = None) -> None:
        self._last = self.clock()  # the epoch end's own work is not step time

    def _end_window(self, now: float) -> None:
        n, secs, steps = self.current, self._win_s, self._win_steps
        self._measured[n] = (secs / steps, now)
        self._totals[n][0] += secs
        self._totals[n][1] += steps
        self._win_s, self._win_steps = 0.0, 0
        self._use(self._choice(now))

    def _choice(self, now: float) -> int:
        other = 1 if self.current == self.budget else self.budget
        seen = self._measured.get(other)
        exploring, self._exploring = self._exploring, False
        if seen is None or now - seen[1] > self.explore_s:
            self._exploring = True
            return other  # explore it for one window
        one, many = self._measured[1][0], self._measured[self.budget][0]
        if self.current != self.budget or exploring:  # to stay on the budget, it must win
            return self.budget if many * MARGIN <= one else 1
        # Leaving the budget costs explore_s at 1 thread before it is tried again, so one
        # noisy window must not do it: a small loss has to repeat; a large one (another
        # process wants the core) leaves at once.
        if many <= one:
            self._strikes = 0
            return self.budget
        self._strikes += 1
        if many > one * LEAVE_AT_ONCE or self._strikes >= 2:
            self._strikes = 0
            return 1
        return self.budget

    def _use(self, n: int) -> None:
        if n != self.current:
            torch.set_num_threads(n)
            self.current = n
            self.switches += 1

    def summary(self) -> dict[str, Any]:
        """What it did, for metrics.json: switches, the count it ended on, and the seconds per
        step and steps timed at each count (the unfinished window included)."""
        totals = {n: list(t) for n, t in self._totals.items()}
        totals[self.current][0] += self._win_s
        totals[self.current][1] += self._win_steps
        return {
            "switches": self.switches,
            "final": self.current,
            "sec_per_step": {str(n): s / k for n, (s, k) in sorted(totals.items()) if k},
            "steps": {str(n): k for n, (_, k) in sorted(totals.items())},
        }


def governed(hooks: dict[str, Any], governor: ThreadGovernor) -> dict[str, Any]:
    """``hooks`` (a reporter's on_step / on_epoch, either may be absent) with the governor's
    own calls added after them."""
    step, epoch = hooks.get("on_step"), hooks.get("on_epoch")

    def on_step() -> None:
        if step is not None:
            step()
        governor.on_step()

    def on_epoch(row: dict[str, Any]) -> None:
        if epoch is not None:
            epoch(row)
        governor.on_epoch(row)

    return {**hooks, "on_step": on_step, "on_epoch": on_epoch}


class ThreadBudget:
    """``runtime.num_threads`` for one job, decided here and nowhere else: the job's count
    (``job``) and each stage's count (``stages``, recorded for metrics.json). With ``auto`` or
    N every stage trains on the count in force, fixed. With ``adaptive`` on a CPU each stage
    measures 1 thread against the budget (``calibrated_threads``), then a governor keeps the
    faster count. ``lend``/``take_back``: threads given to a second process
    (kdrun.experiments.aside) for a while."""

    def __init__(
        self,
        setting: int | str,
        device: torch.device,
        deterministic: bool,
        budget: int | None = None,
        cache_file: Path | None = None,
    ) -> None:
        self.adaptive = str(setting) == "adaptive"  # timing decides: the opt-in
        self.cpu = device.type == "cpu"
        self.deterministic = bool(deterministic)
        self.cache_file = cache_file
        self.budget = torch.get_num_threads() if budget is None else budget
        self.job = self.budget  # the count the job started with (metrics.json threads.job)
        self.stages: dict[str, int] = {}  # stage -> its (starting) count
        self.calibrated: set[str] = set()  # stages whose count was measured (adaptive, CPU)
        self.governors: dict[str, ThreadGovernor] = {}

    @classmethod
    def in_force(cls, runtime: Any, device: torch.device, cache_file: Path | None = None):
        """The budget of ``runtime.num_threads`` at the count this process already has."""
        return cls(runtime.num_threads, device, runtime.deterministic, cache_file=cache_file)

    @classmethod
    def for_job(
        cls,
        runtime: Any,
        device: torch.device,
        hydra_cfg: Any | None = None,
        cache_file: Path | None = None,
    ) -> ThreadBudget:
        """Apply ``runtime.num_threads`` to this process (``hydra_cfg``: the Hydra job's own
        config, whose joblib launcher's n_jobs shares the cores with ``auto``)."""
        n = set_threads(runtime.num_threads, hydra_cfg)
        return cls(runtime.num_threads, device, runtime.deterministic, n, cache_file)

    def choose(self, stage: str, model: nn.Module, batch: Callable[[], torch.Tensor]) -> None:
        """A stage's count: the count in force (by rule: the same on every run), or with
        ``adaptive`` on a CPU 1 thread or the whole budget, whichever trains ``model`` on
        batches like ``batch()`` faster (measured once per machine and model, remembered in
        ``cache_file``; ``batch`` is called only then)."""
        if not (self.adaptive and self.cpu):
            self.stages[stage] = torch.get_num_threads()
            return
        n = calibrated_threads(model, batch(), self.budget, self.cache_file)
        torch.set_num_threads(n)
        self.stages[stage] = n
        self.calibrated.add(stage)

    def govern(self, stage: str, hooks: dict[str, Any]) -> dict[str, Any]:
        """``hooks`` plus a governor's where the stage's count was chosen (auto, CPU) and can
        change: a budget above 1 and no runtime.deterministic (the governor's choices depend
        on timing, and the count can change float sums' order)."""
        if not self.governable(stage) or self.budget <= 1:
            return hooks
        return self.governor(stage, hooks)

    def governor(self, stage: str, hooks: dict[str, Any]) -> dict[str, Any]:
        """``hooks`` plus a new governor of ``stage`` over the whole budget, starting at the
        count in force."""
        start = 1 if torch.get_num_threads() == 1 else self.budget
        self.governors[stage] = ThreadGovernor(self.budget, start)
        return governed(hooks, self.governors[stage])

    def governable(self, stage: str) -> bool:
        return self.adaptive and stage in self.calibrated and not self.deterministic

    def lend(self, n: int = 1) -> None:
        """``n`` threads go to another process: this one runs on the rest."""
        self.budget -= n
        torch.set_num_threads(self.budget)

    def take_back(self, n: int = 1, apply: bool = True) -> None:
        """The lent threads are this process's again (``apply``: use them now; else a
        governor over the new budget decides)."""
        self.budget += n
        if apply:
            torch.set_num_threads(self.budget)

    def summary(self) -> dict[str, Any]:
        """metrics.json ``threads`` (the counts in force) and ``threads_governor``."""
        return {
            "threads": {"job": self.job, **self.stages},
            "threads_governor": {stage: g.summary() for stage, g in self.governors.items()},
        }
