"""The thread governor (kdrun.engine.threads) on a fake clock: every step costs what a table
says for the thread count in force at the time, so the chosen counts are exact. Also: which
stages the pipeline governs, and the OpenMP spin count `import kdrun` sets."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from types import SimpleNamespace

import pytest
import torch

from kdrun.engine.threads import ThreadBudget, ThreadGovernor, governed
from kdrun.experiments.pipeline import Pipeline
from tests.conftest import kdrun_env

IDLE = {1: 0.041, 2: 0.027}  # the CNN teacher's ms/step on 2 cores, idle (bounded spinning)
BUSY = {1: 0.044, 2: 0.128}  # ... with one competing CPU-bound process


@pytest.fixture
def fake_threads(monkeypatch):
    """torch's thread count as a plain number; every set is recorded."""
    state = SimpleNamespace(n=1, sets=[])

    def set_threads(n: int) -> None:
        state.n = n
        state.sets.append(n)

    monkeypatch.setattr(torch, "set_num_threads", set_threads)
    monkeypatch.setattr(torch, "get_num_threads", lambda: state.n)
    return state


class Sim:
    """A stage training on a fake clock: ``cost(now, threads)`` seconds per step."""

    def __init__(self, cost: Callable[[float, int], float], budget=2, start=1, **kw) -> None:
        self.now = 0.0
        self.cost = cost
        self.gov = ThreadGovernor(budget, start, clock=lambda: self.now, **kw)
        self.trace: list[tuple[float, int]] = []  # (end time, thread count) of each step

    def train(self, until: float, per_epoch: int = 0, epoch_end_s: float = 0.0) -> Sim:
        while self.now < until:
            n = torch.get_num_threads()
            self.now += self.cost(self.now, n)
            self.trace.append((self.now, n))
            self.gov.on_step()
            if per_epoch and len(self.trace) % per_epoch == 0:
                self.now += epoch_end_s  # validation, checkpoint: not step time
                self.gov.on_epoch({})
        return self

    def count_at(self, t: float) -> int:
        return next(n for end, n in self.trace if end >= t)

    def switches_to(self, n: int) -> list[float]:
        """When the steps at ``n`` threads began after steps at another count."""
        pairs = zip(self.trace, self.trace[1:], strict=False)
        return [a[0] for a, b in pairs if b[1] == n and a[1] != n]


def steady(table: dict[int, float]) -> Callable[[float, int], float]:
    return lambda _now, n: table[n]


def test_moves_to_the_faster_count_and_stays(fake_threads):
    sim = Sim(steady(IDLE), start=1).train(until=25)
    assert sim.count_at(1.9) == 1  # the first window at the calibrated count
    assert sim.count_at(2.1) == 2  # then the budget, never measured, for one window
    assert all(n == 2 for t, n in sim.trace if t > 2.1)  # 1.5x faster: kept
    assert fake_threads.sets == [2] and sim.gov.switches == 1
    s = sim.gov.summary()
    assert s["final"] == 2 and s["switches"] == 1
    assert s["sec_per_step"] == pytest.approx({"1": IDLE[1], "2": IDLE[2]})


def test_starting_on_the_faster_count_comes_back_after_one_window(fake_threads):
    fake_threads.n = 2
    sim = Sim(steady(IDLE), start=2).train(until=25)
    assert [sim.count_at(t) for t in (1.9, 2.1, 4.2, 20)] == [2, 1, 2, 2]
    assert fake_threads.sets == [1, 2]


def test_a_competing_process_sends_it_to_one_thread_and_back(fake_threads):
    def cost(now: float, n: int) -> float:
        return (BUSY if 40 <= now < 120 else IDLE)[n]

    sim = Sim(cost, start=2, explore_s=30).train(until=200)
    assert sim.count_at(39) == 2
    # the first window at 2 threads under load already loses to 1 thread's last time
    assert all(sim.count_at(t) == 1 for t in (45, 60, 90, 115))
    # while loaded, each try of 2 threads lasts one window and loses again
    tries = [t for t in sim.switches_to(2) if 42 < t < 120]
    assert len(tries) == 2 and all(sim.count_at(t + 2.5) == 1 for t in tries)
    # load gone: back on 2 threads at the next try, at most explore_s + 2 windows later
    back = min(t for t in sim.switches_to(2) if t >= 120)
    assert back <= 120 + 30 + 2 * 2 + 1
    assert sim.count_at(back + 3) == 2 and sim.count_at(199) == 2
    assert sim.gov.summary()["final"] == 2


def test_explores_the_other_count_at_most_once_per_explore_s(fake_threads):
    sim = Sim(steady(IDLE), start=2, explore_s=30).train(until=300)
    tries = sim.switches_to(1)
    gaps = [b - a for a, b in zip(tries, tries[1:], strict=False)]
    assert len(tries) >= 8 and all(g >= 30 for g in gaps), tries
    for t in tries:  # one window (2 s) at 1 thread, then back
        assert sim.count_at(t + 1.9) == 1 and sim.count_at(t + 2.2) == 2
    time_at_1 = sum(IDLE[1] for _, n in sim.trace if n == 1)
    assert time_at_1 < 300 * 0.1  # the price of watching: under 10% of the stage


def test_one_thread_stays_unless_the_budget_beats_it_by_the_margin(fake_threads):
    sim = Sim(steady({1: 0.040, 2: 0.038}), start=1).train(until=100)  # 1.05x: a tie
    assert all(sim.count_at(t) == 1 for t in (10, 30, 60, 90))
    tries = [t for t in sim.switches_to(2) if t < 95]
    assert len(tries) == 3 and all(sim.count_at(t + 2.1) == 1 for t in tries)  # tries only


def test_one_noisy_window_does_not_leave_the_budget_but_a_repeated_loss_does(fake_threads):
    """MLP steps (1.6 vs 1.33 ms): a single 2 s window 20% slower on the budget (noise) keeps
    it; the same loss twice in a row leaves it. Without the hysteresis the noisy window sent
    the governor to 1 thread until the next exploration, 30 s later."""
    mlp = {1: 0.0016, 2: 0.00133}

    def noisy(now: float, n: int) -> float:
        slow = n == 2 and (40.0 <= now < 42.0 or 60.0 <= now < 64.5)
        return mlp[n] * (1.45 if slow else 1.0)

    sim = Sim(noisy, start=2).train(until=100)
    assert all(sim.count_at(t) == 2 for t in (45, 50, 55))  # the 40-42 s window: kept
    left = [t for t in sim.switches_to(1) if 60 <= t < 70]
    assert len(left) == 1 and left[0] > 63  # the loss at 60-64.5 s: after two windows


def test_epoch_end_gaps_are_not_step_time(fake_threads):
    """10 steps per epoch, then 100 s of validation. Counted, the gaps would end a window at
    every epoch's first step and put ~10 s per step on both counts."""
    sim = Sim(steady({1: 0.010, 2: 0.005}), start=1, explore_s=1e9)
    sim.train(until=100 * 100, per_epoch=10, epoch_end_s=100.0)
    s = sim.gov.summary()
    assert s["sec_per_step"] == pytest.approx({"1": 0.010, "2": 0.005})
    assert sum(s["steps"].values()) == len(sim.trace) - 1  # all but the very first step
    assert s["steps"]["1"] in (200, 201)  # one window: 2 s of 10 ms steps, over 20 epochs
    assert fake_threads.sets == [2] and sim.trace[-1][1] == 2


def test_a_one_thread_budget_never_switches(fake_threads):
    sim = Sim(lambda now, n: 0.05, budget=1, start=1).train(until=200)
    assert fake_threads.sets == [] and {n for _, n in sim.trace} == {1}
    s = sim.gov.summary()
    assert s["switches"] == 0 and s["final"] == 1 and set(s["sec_per_step"]) == {"1"}


def test_start_is_applied_and_must_be_one_or_the_budget(fake_threads):
    ThreadGovernor(4, 4)
    assert fake_threads.sets == [4]
    with pytest.raises(ValueError, match="between 1 and 4"):
        ThreadGovernor(4, 2)


def test_governed_hooks_run_the_reporters_and_the_governors(fake_threads):
    calls: list[str] = []
    gov = SimpleNamespace(
        on_step=lambda: calls.append("gov step"), on_epoch=lambda row: calls.append("gov epoch")
    )
    hooks = governed(
        {"on_step": lambda: calls.append("bar"), "on_epoch": lambda row: calls.append("log")}, gov
    )
    hooks["on_step"]()
    hooks["on_epoch"]({})
    assert calls == ["bar", "gov step", "log", "gov epoch"]
    calls.clear()
    only_epoch = governed({"on_epoch": lambda row: calls.append("log")}, gov)  # no progress bar
    only_epoch["on_step"]()
    only_epoch["on_epoch"]({})
    assert calls == ["gov step", "log", "gov epoch"]


def _pipeline(
    deterministic=False, budget=2, chosen=("teacher",), setting="adaptive"
) -> SimpleNamespace:
    threads = ThreadBudget(setting, torch.device("cpu"), deterministic, budget)
    threads.stages.update(dict.fromkeys(chosen, 1))
    if setting == "adaptive":
        threads.calibrated.update(chosen)
    return SimpleNamespace(threads=threads, governors=threads.governors, aside_job=None)


def test_the_pipeline_governs_only_adaptive_cpu_stages_with_a_budget_and_no_determinism(
    fake_threads,
):
    hooks = {"on_epoch": lambda row: None}
    p = _pipeline()
    assert Pipeline._govern(p, "teacher", hooks) is not hooks and set(p.governors) == {"teacher"}
    for p, stage in (
        (_pipeline(), "student"),  # no count chosen: runtime.num_threads=N, or not a CPU
        (_pipeline(budget=1), "teacher"),
        (_pipeline(deterministic=True), "teacher"),
        (_pipeline(setting="auto"), "teacher"),  # auto: a count by rule, never re-decided
    ):
        assert Pipeline._govern(p, stage, hooks) is hooks and p.governors == {}


def test_auto_counts_come_from_rules_and_never_from_a_clock(fake_threads, monkeypatch):
    """runtime.num_threads=auto or N: every stage trains on the count in force (recorded), no
    step is timed, no calibration runs; adaptive calibrates each stage."""
    import kdrun.engine.threads as th

    def no_clock(*a, **k):
        raise AssertionError("a clock decided a thread count")

    monkeypatch.setattr(th, "calibrated_threads", no_clock)
    model = torch.nn.Linear(2, 2)
    for setting in ("auto", 2):
        torch.set_num_threads(2)
        b = ThreadBudget(setting, torch.device("cpu"), False, 2)
        for stage in ("teacher", "baseline", "student"):
            b.choose(stage, model, no_clock)
            assert b.govern(stage, {}) == {} and not b.governable(stage)
        assert b.summary() == {
            "threads": {"job": 2, "teacher": 2, "baseline": 2, "student": 2},
            "threads_governor": {},
        }
    monkeypatch.setattr(th, "calibrated_threads", lambda *a: 1)
    b = ThreadBudget("adaptive", torch.device("cpu"), False, 2)
    b.choose("teacher", model, lambda: torch.zeros(1, 2))
    assert b.governable("teacher") and b.stages == {"teacher": 1}


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        ({}, "10000"),
        ({"GOMP_SPINCOUNT": "300000"}, "300000"),  # the user's own wins
        ({"OMP_WAIT_POLICY": "PASSIVE"}, None),  # a spin count would override their policy
    ],
)
def test_import_kdrun_bounds_openmp_spinning_unless_the_user_chose(user, expected):
    env = {k: v for k, v in kdrun_env().items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    code = "import os, kdrun; print(os.environ.get('GOMP_SPINCOUNT'))"
    out = subprocess.run(
        [sys.executable, "-c", code], env={**env, **user}, capture_output=True, text=True
    )
    assert out.stdout.strip() == str(expected), out.stderr
