"""One temperature story, the teacher-output cache key, typed method options and plugins.

- T lives at the top level for every method: metrics.json ``effective`` holds what the
  method used, ``kdrun -m T=1,4 method=dkd`` sweeps DKD's temperature, ``method.T`` is refused.
- The teacher-logit cache is keyed by (teachers, data, what the method caches), with numbers
  normalised: a ``method.beta`` sweep stores one cache; multi_teacher's depends on T.
- A tiny plugin package (dist-info with entry_points.txt on a temporary sys.path entry) adds
  a method, a model and a data set that run without editing kdrun.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from kdrun.cli.plugins import load_plugins
from kdrun.data import DATASETS
from kdrun.errors import ConfigError
from kdrun.methods import METHODS, unknown_option
from kdrun.methods.dkd import DKD, DKDOptions
from kdrun.methods.multi_teacher import MultiTeacher
from kdrun.models import MODELS
from kdrun.store import content_key
from tests.conftest import kdrun_env, read_json

# --------------------------------------------------------------------------- temperature


def test_method_T_is_refused_with_the_top_level_fix_and_typos_get_a_suggestion():
    with pytest.raises(ConfigError, match=r"top-level T.*write T=\.\.\. instead of method\.T"):
        METHODS["dkd"].options(OmegaConf.create({"name": "dkd", "T": 2.0}))
    with pytest.raises(ConfigError, match="did you mean 'method.beta'"):
        METHODS["dkd"].options(OmegaConf.create({"name": "dkd", "betta": 2.0}))
    assert "did you mean" not in unknown_option("kd", "zzz", ["name", "logit_standardization"])


def _ctx():
    data = SimpleNamespace(
        in_shape=(1, 8, 8),
        student_idx=torch.arange(20),
        y_train=torch.arange(20) % 10,
        num_classes=10,
    )
    return SimpleNamespace(
        data=data, new_student=lambda: nn.Linear(64, 10), teacher=lambda: nn.Linear(64, 10)
    )


@pytest.mark.parametrize(
    "name,expected",
    [
        ("kd", {"T": 2.0, "alpha": 0.7}),
        ("dkd", {"T": 2.0, "alpha": None}),
        ("dist", {"T": 2.0, "alpha": None}),
        ("nkd", {"T": 2.0, "alpha": None}),
    ],
)
def test_effective_records_what_the_method_used(name, expected):
    cfg = OmegaConf.create(
        {
            "method": {"name": name},
            "T": 2.0,
            "alpha": 0.7,
            "seed": 0,
            "student": {"train": {"batch_size": 8, "epochs": 2, "steps_per_epoch": 0}},
        }
    )
    eff = METHODS[name].build(cfg, _ctx()).effective()
    assert {k: eff[k] for k in ("T", "alpha")} == expected


# --------------------------------------------------------------------------- cache key


def test_cache_key_normalises_numbers_and_ignores_loss_only_options():
    assert content_key({"beta": 1}) == content_key({"beta": 1.0})
    assert content_key({"m": [{"beta": 2.0}]}) == content_key({"m": [{"beta": 2}]})
    assert content_key({"beta": 1}) != content_key({"beta": 1.5})
    assert content_key({"flag": True}) != content_key({"flag": 1})
    lin = lambda: nn.Linear(3, 5)  # noqa: E731
    a = DKD(lin(), lin(), DKDOptions(beta=1.0), 1, 2).teacher_output_spec()
    b = DKD(lin(), lin(), DKDOptions(beta=8.0), 1, 2, T=1.0).teacher_output_spec()
    assert a == b == {"outputs": "logits"}


def test_multi_teacher_cache_key_depends_on_T_only_when_it_matters():
    def spec(T, average):
        return MultiTeacher(
            nn.Linear(3, 5), [nn.Linear(3, 5)], T, 0.9, average
        ).teacher_output_spec()

    assert content_key(spec(1.0, "probs")) != content_key(spec(4.0, "probs"))
    assert content_key(spec(4, "probs")) == content_key(spec(4.0, "probs"))
    assert spec(1.0, "logits") == spec(4.0, "logits")


def cache_dirs(store: Path) -> list[Path]:
    return [p for p in (store / "teacher_logits").iterdir() if p.is_dir()]  # not the .lock


@pytest.mark.slow
def test_dkd_sweep_over_T_and_beta_uses_T_and_one_cache(run_kdrun, tmp_path):
    sweep = tmp_path / "sweep"
    r = run_kdrun(
        "-m",
        "experiment=smoke",
        "method=dkd",
        "T=1,4",
        "method.beta=1,2.0",
        "runtime.num_threads=1",
        f"hydra.sweep.dir={sweep}",
    )
    assert r.returncode == 0, r.stderr[-2000:]
    metrics = [read_json(p) for p in sorted(sweep.glob("*/metrics.json"))]
    assert len(metrics) == 4
    assert sorted(m["effective"]["T"] for m in metrics) == [1.0, 1.0, 4.0, 4.0]
    assert all(m["T"] == m["effective"]["T"] and m["alpha"] is None for m in metrics)
    caches = cache_dirs(tmp_path / "store")
    assert len(caches) == 1, caches  # DKD's cached logits depend on neither T nor beta
    summary = json.loads((sweep / "summary.json").read_text())
    assert sorted({row["T"] for row in summary["jobs"]}) == [1.0, 4.0]


@pytest.mark.slow
def test_multi_teacher_T_sweep_keeps_one_cache_per_T(run_kdrun, tmp_path):
    sweep = tmp_path / "sweep"
    r = run_kdrun(
        "-m",
        "experiment=smoke",
        "method=multi_teacher",
        "method.size=2",
        "T=1,4",
        "runtime.num_threads=1",
        f"hydra.sweep.dir={sweep}",
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "corrupt" not in r.stdout + r.stderr
    assert len(cache_dirs(tmp_path / "store")) == 2


@pytest.mark.slow
def test_method_option_typo_is_one_line_before_any_job(run_kdrun, tmp_path):
    r = run_kdrun("-m", "method=dkd", "method.betta=1,2", run_dir=tmp_path / "run")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "kdrun: error: unknown config key 'method.betta' for method 'dkd'; did you mean "
        "'method.beta'? its options are: name, ce_weight, alpha, beta, warmup"
    ]


# --------------------------------------------------------------------------- plugins

PLUGIN = '''
"""A plugin: a method, a model and a data set, registered through entry points."""
from dataclasses import dataclass

import numpy as np
import torch.nn.functional as F
from torch import nn

from kdrun.data import RawData, register_dataset
from kdrun.methods import Distiller
from kdrun.methods.base import MethodOptions


@dataclass
class ToyOptions(MethodOptions):
    name: str = "toy_kd"
    weight: float = 1.0


class ToyKD(Distiller):
    """CE plus the squared distance of the logits to the teacher's."""

    Options = ToyOptions

    def __init__(self, student, teacher, weight):
        super().__init__(student, teacher)
        self.weight = weight

    @classmethod
    def build(cls, cfg, ctx):
        return cls(ctx.new_student(), ctx.teacher(), cls.options(cfg.method).weight)

    def forward(self, x, y, idx, teacher_out):
        logits = self.student(x)
        if teacher_out is None:
            teacher_out = self.teacher_outputs(x)
        return logits, {"hard": F.cross_entropy(logits, y),
                        "toy": self.weight * (logits - teacher_out).pow(2).mean()}


class Tiny(nn.Module):
    def __init__(self, n_in, n_cls):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(n_in, 32), nn.ReLU())
        self.head = nn.Linear(32, n_cls)
        self.kd_stages, self.kd_head = ["body"], "head"

    def forward(self, x):
        return self.head(self.body(x))


def build_tiny(cfg, in_shape, num_classes):
    c, h, w = in_shape
    return Tiny(c * h * w, num_classes)


@register_dataset("toy_blobs", 3, ["a", "b", "c"])
def load_blobs(cfg):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 600)
    x = rng.normal(0, 0.3, (600, 1, 8, 8)).astype(np.float32) + y[:, None, None, None]
    x = ((x - x.min()) / (x.max() - x.min())).astype(np.float32)
    return RawData(x[:500], y[:500].astype(np.int64), x[500:], y[500:].astype(np.int64))
'''


def make_plugin(root: Path) -> tuple[Path, Path]:
    """A package + its dist-info (the form pip installs) under root; a Hydra config dir."""
    site, conf = root / "site", root / "conf"
    (site / "kdrun_toyplugin").mkdir(parents=True)
    (site / "kdrun_toyplugin" / "__init__.py").write_text(PLUGIN)
    info = site / "kdrun_toyplugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: kdrun-toyplugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        textwrap.dedent("""\
        [kdrun.methods]
        toy_kd = kdrun_toyplugin:ToyKD
        [kdrun.models]
        toy_mlp = kdrun_toyplugin:build_tiny
        [kdrun.datasets]
        toy_blobs = kdrun_toyplugin
    """)
    )
    for group, name, text in (
        ("method", "toy_kd", "name: toy_kd\nweight: 0.5\n"),
        ("dataset", "toy_blobs", "name: toy_blobs\nval_size: 0.2\n"),
        ("student", "toy_mlp", "name: toy_mlp\ntrain:\n  epochs: 2\n"),
    ):
        (conf / group).mkdir(parents=True, exist_ok=True)
        (conf / group / f"{name}.yaml").write_text(text)
    return site, conf


def test_plugins_register_from_entry_points(tmp_path, monkeypatch):
    site, _ = make_plugin(tmp_path)
    monkeypatch.syspath_prepend(str(site))
    loaded = load_plugins()
    try:
        assert {"kdrun.methods:toy_kd", "kdrun.models:toy_mlp", "kdrun.datasets:toy_blobs"} <= set(
            loaded
        )
        assert METHODS["toy_kd"].name == "toy_kd" and "toy_mlp" in MODELS
        assert DATASETS["toy_blobs"].num_classes == 3
        assert load_plugins() == []  # once per process
    finally:
        for reg, name in ((METHODS, "toy_kd"), (MODELS, "toy_mlp"), (DATASETS, "toy_blobs")):
            reg.pop(name, None)
        sys.modules.pop("kdrun_toyplugin", None)


@pytest.mark.slow
def test_plugin_runs_end_to_end_and_a_broken_one_is_one_line(run_kdrun, tmp_path):
    site, conf = make_plugin(tmp_path)
    env = {"PYTHONPATH": f"{site}:{kdrun_env()['PYTHONPATH']}"}
    r = run_kdrun(
        f"--config-dir={conf}",
        "experiment=smoke",
        "method=toy_kd",
        "student=toy_mlp",
        "dataset=toy_blobs",
        "runtime.num_threads=1",
        run_dir=tmp_path / "run",
        env=env,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    m = read_json(tmp_path / "run" / "metrics.json")
    assert m["status"] == "completed" and m["method"] == "toy_kd"
    assert m["config"]["method"]["weight"] == 0.5 and m["config"]["student"]["name"] == "toy_mlp"
    listing = run_kdrun("list", env=env).stdout
    assert "toy_kd" in listing and "toy_mlp" in listing and "toy_blobs" in listing
    (site / "kdrun_toyplugin" / "__init__.py").write_text("raise ImportError('no numpy here')\n")
    bad = run_kdrun("list", env=env)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert "kdrun_toyplugin" in bad.stderr and "no numpy here" in bad.stderr
