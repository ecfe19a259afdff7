"""What a run shows while it runs: a header naming the job at once, and per stage a bar with
epoch i/N, the ETA and the validation number, starting where a resumed stage left off."""

from __future__ import annotations

import io

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from rich.console import Console

from kdrun.cli.overview import job_header
from kdrun.config import config_dir, register_configs
from kdrun.report import Reporter


def row(epoch: int) -> dict:
    return {"epoch": epoch, "loss": 0.5, "train_acc": 0.8, "val_acc": 0.75, "seconds": 1.0}


def bar_of(hooks: dict):
    bars = hooks["on_start"].__self__
    return bars.bar.tasks[0]


def test_a_bar_shows_epoch_of_epochs_and_the_validation_number():
    screen = io.StringIO()
    with Reporter(Console(file=screen, width=120), progress=True).stage("student", 40) as hooks:
        hooks["on_start"](0, 4)
        task = bar_of(hooks)
        assert task.completed == 0 and task.fields["where"] == "epoch 1/4"
        for _ in range(10):
            hooks["on_step"]()
        hooks["on_epoch"](row(1))
        assert task.completed == 10 and task.fields["where"] == "epoch 2/4"
        assert task.fields["info"] == "loss 0.500 val_acc 0.7500"
    assert "ETA" in screen.getvalue() and "epoch 2/4" in screen.getvalue()


def test_a_resumed_stage_starts_where_it_left_off():
    with Reporter(Console(file=io.StringIO()), progress=True).stage("student", 40) as hooks:
        hooks["on_start"](3, 4)  # 3 of 4 epochs were done before the interruption
        task = bar_of(hooks)
        assert task.completed == 30 and task.fields["where"] == "epoch 4/4"
        for _ in range(7):  # resumed mid-epoch: fewer steps than an epoch's
            hooks["on_step"]()
        hooks["on_epoch"](row(4))
        assert task.completed == 40 and task.finished  # ends full, not at 37/40


def test_the_header_names_the_job():
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["method=dkd", "T=2", "alpha=0.5"])
    GlobalHydra.instance().clear()
    text = job_header(cfg, "/runs/x")
    assert text.splitlines() == [
        f"kdrun · {cfg.dataset.name} · teacher {cfg.teacher.name} → student "
        f"{cfg.student.name} · method dkd · T=2 · alpha=0.5 · seed {cfg.seed}",
        "run dir: /runs/x",
    ]
