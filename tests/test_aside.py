"""The baseline trained in a second process beside the distilled student
(kdrun.experiments.aside): the same bits as in line, a fallback when the process fails, no
process left behind, and the conditions under which it is used."""

from __future__ import annotations

import io
import logging
import shutil
from types import SimpleNamespace

import pytest
import torch
from rich.console import Console

from kdrun.errors import Interrupted
from kdrun.experiments import aside
from kdrun.experiments.pipeline import run_pipeline
from kdrun.report import Reporter
from tests.test_perf_correctness import make_cfg, make_pipeline


def _run(tmp_path, name: str, **over):
    cfg = make_cfg(tmp_path, **over)
    rep = Reporter(Console(file=io.StringIO()), progress=False)
    return run_pipeline(cfg, tmp_path / name, rep)


# ---- the baseline in a second process ---------------------------------------------------
@pytest.mark.slow
def test_the_baseline_trained_aside_is_the_baseline_trained_in_line(tmp_path, caplog):
    """Same store key, initial weights and batch order: the same bits (both on 1 thread; the
    teacher is shared through the store, so the students match too)."""
    seq = tmp_path / "seq"
    seq_m = _run(seq, "run", **{"runtime.parallel_baseline": "off", "runtime.num_threads": 1})
    a = tmp_path / "aside"
    (a / "store").mkdir(parents=True)
    shutil.copytree(seq / "store" / "teacher", a / "store" / "teacher")
    with caplog.at_level(logging.INFO, logger="kdrun"):
        aside_m = _run(a, "run", **{"runtime.parallel_baseline": "on", "runtime.num_threads": 2})
    assert aside_m["baseline_aside"]["ok"] is True and seq_m["baseline_aside"] is None
    assert aside_m["baseline"]["source"] == "trained" and not aside_m["from_store"]["baseline"]
    assert aside_m["threads"]["baseline"] == 1
    assert "baseline epoch 2: loss" in caplog.text  # its progress, shown by the job
    for k in ("test_acc", "val_acc", "best_epoch"):
        assert aside_m["baseline"][k] == seq_m["baseline"][k], k
    for who in ("baseline", "student"):
        x = torch.load(a / "run" / "checkpoints" / f"{who}.pt")
        y = torch.load(seq / "run" / "checkpoints" / f"{who}.pt")
        assert all(torch.equal(x[k], y[k]) for k in y), who
    # the history keeps the order of a sequential job: teacher, baseline, student
    stages = [r["stage"] for r in aside_m["_history"]]
    assert stages == ["teacher"] * 2 + ["baseline"] * 2 + ["student"] * 2
    for x, y in zip(aside_m["_history"], seq_m["_history"], strict=True):
        assert {k: v for k, v in x.items() if k not in ("seconds", "from_store")} == {
            k: v for k, v in y.items() if k not in ("seconds", "from_store")
        }


def test_a_failed_second_process_means_the_job_trains_the_baseline(tmp_path, caplog):
    p = make_pipeline(tmp_path)
    failed = SimpleNamespace(join=lambda: None, exitcode=1, is_alive=lambda: False)
    queue = SimpleNamespace(empty=lambda: False, get=lambda: {"ok": False, "error": "OSError: x"})
    with caplog.at_level(logging.WARNING, logger="kdrun"):
        model = aside.finish(p, aside.Aside(failed, queue, 0.0, 0))
    assert "second process failed (OSError: x); training it here" in caplog.text
    assert p.reports["baseline"].source == "trained" and p.baseline_aside["ok"] is False
    assert model is not None and p.history and p.history[0]["stage"] == "baseline"


def test_the_recorded_time_is_the_childs_own_not_the_jobs_wait(tmp_path):
    p = make_pipeline(tmp_path)
    done = SimpleNamespace(join=lambda: None, exitcode=0, is_alive=lambda: False)
    outcome = {"ok": True, "from_store": False, "seconds": 12.3}
    queue = SimpleNamespace(empty=lambda: False, get=lambda: outcome)
    aside.finish(p, aside.Aside(done, queue, 0.0, 0))  # t0 = 0: the job "waited" for ages
    assert p.baseline_aside["ok"] is True and p.baseline_aside["seconds"] == 12.3


def test_an_interrupted_job_ends_its_second_process(tmp_path, monkeypatch):
    started = []
    real_start = aside.start
    monkeypatch.setattr(
        aside, "start", lambda p, child: started.append(real_start(p, child)) or started[-1]
    )
    cfg = make_cfg(tmp_path, **{"runtime.parallel_baseline": "on", "runtime.num_threads": 2})
    rep = Reporter(Console(file=io.StringIO()), progress=False)
    calls = []

    def stop_in_the_student() -> bool:  # the teacher trains; the student stops at once
        calls.append(1)
        return bool(started)

    with pytest.raises(Interrupted, match="student stopped"):
        run_pipeline(cfg, tmp_path / "run", rep, should_stop=stop_in_the_student)
    assert len(started) == 1 and not started[0].proc.is_alive()


# parallel_baseline=auto trains aside only with timing-driven thread counts (the opt-in)
ADAPTIVE = {"runtime.num_threads": "adaptive"}


@pytest.mark.parametrize(
    ("over", "budget", "est", "wanted"),
    [
        (ADAPTIVE, 2, 100.0, True),  # auto: a long baseline on 2 threads
        (ADAPTIVE, 2, 5.0, False),  # too short to pay for a second process
        (ADAPTIVE, 1, 100.0, False),  # one thread: nothing to share
        ({}, 2, 100.0, False),  # auto threads: one process, the same numbers on every run
        ({"runtime.parallel_baseline": "off"}, 2, 100.0, False),
        ({"runtime.parallel_baseline": "on"}, 2, 0.0, True),
        ({"runtime.parallel_baseline": "on"}, 1, 0.0, False),
        ({"baseline": False}, 2, 100.0, False),
        ({**ADAPTIVE, "runtime.deterministic": True}, 2, 100.0, False),  # one process
        ({"runtime.num_threads": 2}, 2, 100.0, False),  # a fixed count is the user's choice
    ],
)
def test_when_the_baseline_goes_aside(tmp_path, over, budget, est, wanted):
    p = make_pipeline(tmp_path, **over)
    p.thread_budget = budget
    assert aside.wanted(p, est_seconds=est) is wanted


def test_auto_keeps_big_data_in_one_process(tmp_path, monkeypatch):
    p = make_pipeline(tmp_path, **ADAPTIVE)
    p.thread_budget = 2
    assert aside.wanted(p, est_seconds=100.0)
    monkeypatch.setattr(aside, "MAX_DATA_BYTES", aside._data_bytes(p) - 1)
    assert not aside.wanted(p, est_seconds=100.0)  # the child would hold a second copy


def test_a_stored_baseline_is_loaded_not_trained_aside(tmp_path):
    p = make_pipeline(tmp_path, **{"runtime.parallel_baseline": "on"})
    p.thread_budget = 2
    p.baseline()
    assert not aside.wanted(p, est_seconds=100.0)


def test_the_estimate_counts_every_step_and_leaves_the_rng_alone(tmp_path, monkeypatch):
    p = make_pipeline(tmp_path)
    monkeypatch.setattr(aside, "seconds_per_step", lambda *_a, **_k: {1: 0.01})
    rng = torch.get_rng_state()
    n = len(p.data.student_idx)
    steps = -(-n // 64) * 2  # make_cfg: batch 64, 2 epochs
    assert aside._expected_seconds(p) == pytest.approx(1.5 * 0.01 * steps)
    assert torch.equal(torch.get_rng_state(), rng)


def test_planned_steps_counts_batches_and_caps_an_epoch():
    from kdrun.engine import planned_steps

    recipe = SimpleNamespace(batch_size=64, steps_per_epoch=0, epochs=3)
    assert planned_steps(recipe, 130) == 9  # 3 batches (the last short) per epoch
    recipe.steps_per_epoch = 2
    assert planned_steps(recipe, 130) == 6


# ---- the child's thread back to the student ---------------------------------------------
@pytest.fixture
def threads_restored():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _process(state: dict) -> SimpleNamespace:
    """A stand-in child whose liveness the test sets."""
    return SimpleNamespace(is_alive=lambda: state["alive"], join=lambda: None, exitcode=0)


def _lent(tmp_path, state: dict, **over):
    """A pipeline on 2 threads with one lent to a child: the student stage on 1, adaptive
    (its count chosen by calibration) unless ``over`` says otherwise."""
    p = make_pipeline(tmp_path, **{**ADAPTIVE, **over})
    p.aside_job = aside.Aside(_process(state), None, 0.0, 0)
    p.thread_budget, p.stage_threads["student"] = 1, 1
    p.threads.calibrated.add("student")
    torch.set_num_threads(1)
    return p


def test_the_student_takes_the_thread_back_after_the_child_exits(tmp_path, threads_restored):
    state = {"alive": True}
    p = _lent(tmp_path, state)
    steps = []
    hooks = p._govern("student", {"on_step": lambda: steps.append(1)})
    assert "student" not in p.governors  # one thread: nothing to choose yet
    hooks["on_step"]()
    hooks["on_epoch"]({"epoch": 1})
    assert p.thread_budget == 1 and p.aside_job.reclaimed_at is None
    state["alive"] = False
    hooks["on_epoch"]({"epoch": 2})  # the first epoch end after the exit
    assert p.aside_job.reclaimed_at == 2 and p.thread_budget == 2
    g = p.governors["student"]
    assert (g.budget, g.current, g._last) == (2, 1, None)  # starts where it is, times both
    hooks["on_step"]()
    assert len(steps) == 2 and g._last is not None  # the steps now reach the governor
    hooks["on_epoch"]({"epoch": 3})
    assert p.aside_job.reclaimed_at == 2 and p.thread_budget == 2  # once


@pytest.mark.parametrize(
    "over",
    [
        {"runtime.deterministic": True},
        {"runtime.num_threads": 2},
        {"runtime.num_threads": "auto"},  # a count by rule: no thread comes back mid-stage
    ],
)
def test_a_fixed_thread_count_stays_fixed_when_the_child_exits(tmp_path, threads_restored, over):
    p = _lent(tmp_path, {"alive": False}, **over)
    if "runtime.num_threads" in over:
        del p.stage_threads["student"]  # a fixed count is not chosen per stage
    hooks = p._govern("student", {})
    assert hooks == {} and p.thread_budget == 1  # no hook: the count never changes


def test_the_budget_is_whole_again_after_the_student_whether_or_not_it_took_it_back(
    tmp_path, threads_restored, monkeypatch
):
    from kdrun.experiments import pipeline

    for back in (False, True):
        p = make_pipeline(tmp_path, **{"runtime.parallel_baseline": "on"})
        p.thread_budget = 2
        monkeypatch.setattr(aside, "start", lambda p, child: aside.Aside(_process({}), None, 0, 0))
        monkeypatch.setattr(aside, "finish", lambda p, job: "baseline")

        def distill(p=p, back=back):
            assert p.thread_budget == 1 and torch.get_num_threads() == 1
            if back:  # what the reclaiming hook does at an epoch end
                p.aside_job.reclaimed_at = 1
                p._thread_back({})
            return "distiller", "result"

        p.distill = distill
        assert pipeline._baseline_and_student(p) == ("baseline", "distiller", "result")
        assert p.thread_budget == 2 and torch.get_num_threads() == 2 and p.aside_job is None


# ---- the baseline's progress, shown by the job -------------------------------------------
class _Recorder(Reporter):
    """A piped reporter that keeps the side rows it is given."""

    def __init__(self) -> None:
        super().__init__(Console(file=io.StringIO()), progress=False)
        self.side_rows: list[tuple[str, int]] = []

    def side_row(self, name, row) -> None:
        self.side_rows.append((name, int(row["epoch"])))
        super().side_row(name, row)


def test_the_job_shows_the_epoch_rows_of_the_baseline_in_its_second_process(tmp_path, caplog):
    cfg = make_cfg(tmp_path, **{"runtime.parallel_baseline": "on", "runtime.num_threads": 2})
    rep = _Recorder()
    with caplog.at_level(logging.INFO, logger="kdrun"):
        m = run_pipeline(cfg, tmp_path / "run", rep)
    assert m["baseline_aside"]["ok"] is True
    assert rep.side_rows == [("baseline", 1), ("baseline", 2)]
    # piped: the baseline's epoch lines are in the output as the student's are
    assert "baseline epoch 1: loss" in caplog.text and "baseline epoch 2: loss" in caplog.text
    assert "student epoch 2: loss" in caplog.text
    # the child no longer writes them to the log itself (the job's log handler does: once)
    assert "baseline epoch" not in (tmp_path / "run" / "kdrun.log").read_text()


def _row(epoch: int) -> dict:
    return {
        "epoch": epoch,
        "loss": 1.0 / epoch,
        "train_acc": 0.5,
        "val_acc": 0.25 * epoch,
        "seconds": 1.0,
    }


def test_with_bars_the_baseline_gets_a_bar_of_its_own():
    out = io.StringIO()
    rep = Reporter(Console(file=out, force_terminal=True, width=140), progress=True)
    rep.side_stage("baseline", 3)
    with rep.stage("student", 30) as hooks:
        hooks["on_start"](0, 3)
        rep.side_row("baseline", _row(1))  # during the student's stage: a task in its bar
    shown = out.getvalue()
    assert "baseline" in shown and "epoch 2/3" in shown and "val_acc 0.2500" in shown
    with rep.side_wait("baseline"):  # the student is done; the job waits for the baseline
        rep.side_row("baseline", _row(3))
    assert "epoch 3/3" in out.getvalue() and "val_acc 0.7500" in out.getvalue()


def test_a_child_that_dies_ends_the_reading_of_its_rows():
    import multiprocessing as mp

    rows_in, rows_out = mp.Pipe(duplex=False)
    rep = _Recorder()
    rep.side_stage("baseline", 5)
    rows_out.send(("baseline", _row(1)))
    rows_out.close()  # what the child's exit does: the reader sees the end, not a hang
    aside._show_rows(rows_in, rep)
    assert rep.side_rows == [("baseline", 1)]
