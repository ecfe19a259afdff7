"""A plugin model and a plugin data set declare their own config fields (a dataclass each):
``student.options.width=16`` reaches the builder typed, an unknown option or a wrong type is
one config error line, and so for ``dataset.options``. The plugin is a package outside kdrun
(a dist-info with entry_points.txt on a temporary sys.path entry, the form pip installs)."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from kdrun.cli.plugins import load_plugins
from kdrun.config import config_dir, dataset_options, model_options, register_configs
from kdrun.data import DATASETS, load_data
from kdrun.errors import ConfigError
from kdrun.experiments import validate
from kdrun.experiments.keys import data_section, model_section
from kdrun.models import MODEL_OPTIONS, MODELS, build_model, count_params
from tests.conftest import kdrun_env, read_json

register_configs()

PLUGIN = '''
"""A plugin: a model and a data set, each with its own options."""
from dataclasses import dataclass

import numpy as np
from torch import nn

from kdrun.config import dataset_options, model_options
from kdrun.data import RawData, register_dataset


@dataclass
class TinyOptions:
    width: int = 8
    act: str = "relu"


class Tiny(nn.Module):
    def __init__(self, n_in, width, n_cls):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(n_in, width), nn.ReLU())
        self.head = nn.Linear(width, n_cls)
        self.kd_stages, self.kd_head = ["body"], "head"

    def forward(self, x):
        return self.head(self.body(x))


def build_tiny(cfg, in_shape, num_classes):
    opts = model_options(cfg)
    c, h, w = in_shape
    return Tiny(c * h * w, opts.width, num_classes)


build_tiny.Options = TinyOptions  # entry point naming the builder: its options ride along


@dataclass
class BlobOptions:
    noise: float = 0.3
    rows: int = 600


@register_dataset("opt_blobs", 3, ["a", "b", "c"], options=BlobOptions)
def load_blobs(cfg):
    o = dataset_options(cfg)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, o.rows)
    x = rng.normal(0, o.noise, (o.rows, 1, 8, 8)).astype(np.float32) + y[:, None, None, None]
    x = ((x - x.min()) / (x.max() - x.min())).astype(np.float32)
    cut = o.rows * 5 // 6
    return RawData(x[:cut], y[:cut].astype(np.int64), x[cut:], y[cut:].astype(np.int64))
'''

ENTRY_POINTS = """\
[kdrun.models]
opt_mlp = kdrun_optplugin:build_tiny
[kdrun.datasets]
opt_blobs = kdrun_optplugin
"""


def make_plugin(root: Path) -> tuple[Path, Path]:
    """The package + dist-info under root/site; its Hydra configs under root/conf."""
    site, conf = root / "site", root / "conf"
    (site / "kdrun_optplugin").mkdir(parents=True)
    (site / "kdrun_optplugin" / "__init__.py").write_text(PLUGIN)
    info = site / "kdrun_optplugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: kdrun-optplugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(ENTRY_POINTS))
    for group, text in (
        ("student", "name: opt_mlp\noptions:\n  width: 8\ntrain:\n  epochs: 2\n"),
        ("dataset", "name: opt_blobs\nval_size: 0.2\noptions:\n  noise: 0.3\n"),
    ):
        (conf / group).mkdir(parents=True, exist_ok=True)
        (conf / group / "opt.yaml").write_text(text)
    return site, conf


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    """Loaded once: load_plugins reads each entry point once per process."""
    site, conf = make_plugin(tmp_path_factory.mktemp("optplugin"))
    sys.path.insert(0, str(site))
    load_plugins()
    yield site, conf
    sys.path.remove(str(site))
    MODELS.pop("opt_mlp", None)
    MODEL_OPTIONS.pop("opt_mlp", None)
    DATASETS.pop("opt_blobs", None)
    sys.modules.pop("kdrun_optplugin", None)


def compose_cfg(*overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


PLUGGED = ("student.name=opt_mlp", "dataset.name=opt_blobs")


def test_model_options_reach_the_builder_typed_with_defaults(plugin):
    assert MODEL_OPTIONS["opt_mlp"].__name__ == "TinyOptions"
    cfg = compose_cfg(*PLUGGED, "+student.options.width=16")
    validate(cfg)
    opts = model_options(cfg.student, "student")
    assert (opts.width, opts.act) == (16, "relu")  # the default filled in
    model = build_model(cfg.student, (1, 8, 8), 3)
    assert count_params(model) == 64 * 16 + 16 + 16 * 3 + 3
    assert model_options(compose_cfg(*PLUGGED).student).width == 8


def test_dataset_options_reach_the_loader(plugin):
    cfg = compose_cfg(*PLUGGED, "+dataset.options.rows=120", "runtime.progress=off")
    validate(cfg)
    assert dataset_options(cfg.dataset).rows == 120 and dataset_options(cfg.dataset).noise == 0.3
    data = load_data(cfg.dataset, "cpu")
    assert len(data.y_train) + len(data.y_val) + len(data.y_test) == 120


@pytest.mark.parametrize(
    "override,message",
    [
        (
            "+student.options.widht=16",
            "unknown config key 'student.options.widht' for model 'opt_mlp'; did you mean "
            "'student.options.width'? its options are: width, act",
        ),
        ("+student.options.width=wide", "bad option student.options.width for model 'opt_mlp'"),
        (
            "+dataset.options.noize=0.1",
            "unknown config key 'dataset.options.noize' for data set 'opt_blobs'; did you mean "
            "'dataset.options.noise'? its options are: noise, rows",
        ),
        ("+dataset.options.rows=many", "bad option dataset.options.rows for data set 'opt_blobs'"),
        ("+teacher.options.width=16", "model 'cnn' takes no options, but teacher.options has"),
    ],
)
def test_bad_options_are_one_config_error(plugin, override, message):
    cfg = compose_cfg(*PLUGGED, "teacher=cnn", override)
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_options_given_change_the_store_key_and_none_given_leave_it(plugin):
    base = compose_cfg(*PLUGGED)
    wide = compose_cfg(*PLUGGED, "+student.options.width=16")
    assert "options" not in model_section(base.teacher)  # keys of stores written before hold
    assert model_section(wide.student)["options"] == {"width": 16}
    more = compose_cfg(*PLUGGED, "+dataset.options.rows=120")
    assert data_section(more, "teacher", "fp")["options"] == {"rows": 120}
    assert "options" not in data_section(base, "teacher", "fp")


@pytest.mark.slow
def test_plugin_options_from_the_command_line_end_to_end(run_kdrun, tmp_path):
    site, conf = make_plugin(tmp_path)
    env = {"PYTHONPATH": f"{site}:{kdrun_env()['PYTHONPATH']}"}
    common = (f"--config-dir={conf}", "experiment=smoke", "student=opt", "dataset=opt")
    r = run_kdrun(
        *common,
        "student.options.width=16",  # listed in the plugin's YAML: no + needed
        "+dataset.options.rows=300",  # not in its YAML: added with +
        "runtime.num_threads=1",
        run_dir=tmp_path / "run",
        env=env,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    m = read_json(tmp_path / "run" / "metrics.json")
    assert m["status"] == "completed" and m["student"]["params"] == 64 * 16 + 16 + 16 * 3 + 3
    assert m["config"]["student"]["options"] == {"width": 16}
    bad = run_kdrun(*common, "student.options.width=wide", run_dir=tmp_path / "bad", env=env)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert "bad option student.options.width for model 'opt_mlp'" in bad.stderr
    plus = run_kdrun(*common, "dataset.options.rows=300", run_dir=tmp_path / "plus", env=env)
    assert plus.returncode == 2 and "add it with +dataset.options.rows=VALUE" in plus.stderr
