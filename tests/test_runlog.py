"""kdrun.log holds the whole run in every mode: epoch lines (with or without progress bars), the
final table, warnings, the error of a failed run (the interrupt line: tests/test_resume.py)."""

from __future__ import annotations

import io
import logging
import warnings

import pytest
from rich.control import Control
from rich.table import Table

from kdrun.report import Reporter
from kdrun.runlog import LoggedConsole, to_log, warnings_logged
from tests.conftest import read_json

ROW = {"epoch": 1, "loss": 0.5, "train_acc": 0.8, "val_acc": 0.75, "seconds": 1.0}


@pytest.fixture
def run_log(tmp_path):
    """A file handler on the root logger, as Hydra's job logging sets up; its path."""
    path = tmp_path / "kdrun.log"
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("[%(name)s][%(levelname)s] - %(message)s"))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield path
    root.removeHandler(handler)
    root.setLevel(old_level)
    handler.close()
    logging.getLogger("kdrun.file").handlers = []


@pytest.mark.parametrize("bars", [True, False])
def test_epoch_lines_reach_the_log_with_and_without_bars(run_log, bars):
    screen = io.StringIO()
    reporter = Reporter(LoggedConsole(file=screen, width=100), progress=bars)
    with reporter.stage("student", total_steps=3) as hooks:
        hooks["on_epoch"](ROW)
    assert "student epoch 1: loss 0.5000 train_acc 0.8000 val_acc 0.7500" in run_log.read_text()
    # with bars the line goes to the file alone (the bar shows it on screen)
    assert ("student epoch 1: loss" in screen.getvalue()) is False


def test_printed_tables_and_notes_reach_the_log_but_live_refreshes_do_not(run_log):
    console = LoggedConsole(file=io.StringIO(), width=100, force_terminal=True)
    t = Table(title="kdrun · digits")
    t.add_column("stage and a long header")
    t.add_row("distilled")
    console.print(t)
    console.print("[dim]results: /x/metrics.json[/]")
    console.print(Control())
    text = run_log.read_text()
    assert "kdrun · digits" in text and "distilled" in text and "results: /x/metrics.json" in text
    assert "\x1b[" not in text  # plain text, no colour codes
    assert text.count("[kdrun.file]") == 2


def test_warnings_and_errors_reach_the_log(run_log):
    with warnings_logged():  # what warnings.warn calls to show a warning
        warnings.showwarning(UserWarning("lr looks high"), UserWarning, "x.py", 1, io.StringIO())
    to_log("kdrun: error: something failed; do this", logging.ERROR)
    text = run_log.read_text()
    assert "UserWarning: lr looks high" in text and "[WARNING]" in text
    assert "kdrun: error: something failed; do this" in text


@pytest.mark.slow
def test_the_log_of_a_run_and_of_a_failed_run(run_kdrun, tmp_path):
    """Piped output with bars forced on (the terminal's code path) and without."""
    ok = run_kdrun("experiment=smoke", "runtime.progress=on", run_dir=tmp_path / "ok")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("kdrun · digits · teacher cnn → student mlp · method kd")
    log = (tmp_path / "ok" / "kdrun.log").read_text()
    for stage in ("teacher", "baseline", "student"):
        assert f"{stage} epoch 2: loss" in log
    assert "distilled" in log and "KD gain" in log and "results: " in log
    bad = run_kdrun(
        "experiment=smoke",
        "baseline=false",
        "student.train.schedule=step",
        "student.train.milestones=[1]",
        "student.train.gamma=1e30",
        run_dir=tmp_path / "nan",
    )
    assert bad.returncode == 3
    assert read_json(tmp_path / "nan" / "metrics.json")["status"] == "failed"
    log = (tmp_path / "nan" / "kdrun.log").read_text()
    assert "student epoch 1: loss" in log
    assert bad.stderr.strip().splitlines()[-1] in log  # the error line, as on the screen
