"""Entry-point groups beyond methods, models and data sets: a language-model method, a task,
an experiment kind and an analysis from a package outside kdrun (a dist-info with
entry_points.txt on a temporary sys.path entry, the form pip installs)."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from kdrun.cli.plugins import load_plugins
from kdrun.errors import ConfigError
from kdrun.experiments.analyses import ANALYSES
from kdrun.experiments.kinds import KINDS, run_kind
from kdrun.methods import LM_METHODS
from kdrun.tasks import TASKS, task_named

PLUGIN = '''
"""A plugin: a language-model method, a task, an experiment kind and an analysis."""
import copy

from kdrun.experiments.analyses import register_analysis
from kdrun.methods.lm import LMKD
from kdrun.tasks.classify import CLASSIFY


class ToyLM(LMKD):
    """Token-level KD under another name."""


TASK = copy.copy(CLASSIFY)
TASK.name = "toy_task"


def run_toy(cfg, run_dir, reporter, should_stop=None):
    return {"toy": cfg.seed, "_history": []}


@register_analysis("toy_an", lambda cfg: False, needs_teacher=False)
def toy_analysis(ctx):
    return {"ran": True}
'''

ENTRY_POINTS = """\
[kdrun.lm_methods]
toy_lm = kdrun_groupsplugin:ToyLM
[kdrun.tasks]
toy_task = kdrun_groupsplugin:TASK
[kdrun.kinds]
toy_kind = kdrun_groupsplugin:run_toy
[kdrun.analyses]
toy_an = kdrun_groupsplugin
"""


def make_plugin(root: Path, entry_points: str = ENTRY_POINTS) -> Path:
    site = root / "site"
    (site / "kdrun_groupsplugin").mkdir(parents=True)
    (site / "kdrun_groupsplugin" / "__init__.py").write_text(PLUGIN)
    info = site / "kdrun_groupsplugin-0.1.dist-info"
    info.mkdir()
    meta = "Metadata-Version: 2.1\nName: kdrun-groupsplugin\nVersion: 0.1\n"
    (info / "METADATA").write_text(meta)
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))
    return site


@pytest.fixture
def plugin_site(tmp_path, monkeypatch):
    site = make_plugin(tmp_path)
    monkeypatch.syspath_prepend(str(site))
    yield site
    for reg, name in ((LM_METHODS, "toy_lm"), (TASKS, "toy_task"), (KINDS, "toy_kind")):
        reg.pop(name, None)
    ANALYSES.pop("toy_an", None)
    sys.modules.pop("kdrun_groupsplugin", None)


def test_lm_methods_tasks_kinds_and_analyses_register_from_entry_points(plugin_site):
    loaded = set(load_plugins())
    expected = {"kdrun.lm_methods:toy_lm", "kdrun.tasks:toy_task", "kdrun.kinds:toy_kind"}
    assert expected | {"kdrun.analyses:toy_an"} <= loaded
    assert LM_METHODS["toy_lm"].name == "toy_lm"
    assert "toy_lm" in task_named("lm").methods  # method=toy_lm on a language model
    assert task_named("toy_task").headline == "test_acc"
    cfg = OmegaConf.create({"kind": "toy_kind", "seed": 7})
    assert run_kind(cfg, Path("."), reporter=None)["toy"] == 7  # kind=toy_kind runs it
    assert ANALYSES["toy_an"].run(None) == {"ran": True}


def test_an_entry_point_that_registers_nothing_by_its_name_is_one_line(tmp_path, monkeypatch):
    site = make_plugin(tmp_path, "[kdrun.tasks]\nwrong_name = kdrun_groupsplugin:TASK\n")
    monkeypatch.syspath_prepend(str(site))
    try:
        with pytest.raises(ConfigError, match="registered no task named 'wrong_name'"):
            load_plugins()
    finally:
        sys.modules.pop("kdrun_groupsplugin", None)
        ANALYSES.pop("toy_an", None)
