"""Methods, models and data sets from other packages, through Python entry points.

An installed distribution adds them without touching kdrun, in entry-point groups
(pyproject.toml of the plugin):

    [project.entry-points."kdrun.methods"]
    toy_kd = "kdrun_toy.methods:ToyKD"     # a Distiller subclass: registered under "toy_kd"
    [project.entry-points."kdrun.models"]
    toy_mlp = "kdrun_toy.models:build"     # a builder (cfg, in_shape, num_classes) -> nn.Module
    [project.entry-points."kdrun.datasets"]
    toy = "kdrun_toy.data"                 # a module whose import calls register_dataset
    [project.entry-points."kdrun.lm_methods"]
    toy_lm = "kdrun_toy.lm:ToyLM"          # a Distiller subclass for language models
    [project.entry-points."kdrun.tasks"]
    toy_task = "kdrun_toy.task:TASK"       # a Task instance whose name is the entry point's
    [project.entry-points."kdrun.kinds"]
    toy_kind = "kdrun_toy.kind:run"        # (cfg, run_dir, reporter, should_stop) -> metrics
    [project.entry-points."kdrun.analyses"]
    toy_an = "kdrun_toy.analysis"          # a module whose import calls register_analysis

Any entry point may also name a module that registers its names itself on import
(``register_method`` / ``register_model`` / ``register_dataset`` / ``register_lm_method`` /
``register_task`` / ``register_kind`` / ``register_analysis``). Its YAML (e.g.
``method/toy_kd.yaml``) lives in the plugin's own config directory, added to Hydra's search
path on the command line: ``kdrun --config-dir DIR method=toy_kd``.
"""

from __future__ import annotations

import inspect
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from kdrun.data import DATASETS
from kdrun.errors import ConfigError, one_line
from kdrun.experiments.analyses import ANALYSES, Analysis
from kdrun.experiments.kinds import KINDS, register_kind
from kdrun.methods import LM_METHODS, METHODS, Distiller, register_method
from kdrun.methods.lm import register_lm_method
from kdrun.models import MODELS, register_model
from kdrun.tasks import TASKS, register_task

GROUPS: dict[str, tuple[str, dict[str, Any]]] = {
    "kdrun.methods": ("method", METHODS),
    "kdrun.models": ("model", MODELS),
    "kdrun.datasets": ("data set", DATASETS),
    "kdrun.lm_methods": ("language-model method", LM_METHODS),
    "kdrun.tasks": ("task", TASKS),
    "kdrun.kinds": ("experiment kind", KINDS),
    "kdrun.analyses": ("analysis", ANALYSES),
}
_loaded: set[tuple[str, str]] = set()


def _register(group: str, name: str, obj: Any) -> None:
    """Register what an entry point named, unless importing it already did."""
    registry = GROUPS[group][1]
    if name in registry or inspect.ismodule(obj):
        return
    distiller = isinstance(obj, type) and issubclass(obj, Distiller)
    if group == "kdrun.methods" and distiller:
        register_method(name)(obj)
    elif group == "kdrun.lm_methods" and distiller:
        register_lm_method(name)(obj)
    elif group == "kdrun.models" and callable(obj):  # its own fields: a dataclass .Options
        register_model(name, options=getattr(obj, "Options", None))(obj)
    elif group == "kdrun.tasks" and getattr(obj, "name", None) == name:
        register_task(obj)
    elif group == "kdrun.kinds" and callable(obj):
        register_kind(name)(obj)
    elif group == "kdrun.analyses" and isinstance(obj, Analysis):
        ANALYSES[name] = obj


def _load(group: str, ep: EntryPoint) -> None:
    what, registry = GROUPS[group]
    where = f"entry point {ep.name} = {ep.value} ({group})"
    try:
        obj = ep.load()
    except Exception as e:  # a broken plugin names itself; kdrun's own code is not at fault
        raise ConfigError(
            f"plugin {where} failed to load: {one_line(e)}; fix or uninstall that package"
        ) from None
    _register(group, ep.name, obj)
    if ep.name not in registry:
        raise ConfigError(
            f"plugin {where} registered no {what} named '{ep.name}'; name the entry point "
            f"after what it registers"
        )


def load_plugins() -> list[str]:
    """Load every kdrun entry point once per process; return '<group>:<name>' of new ones."""
    new = []
    for group in GROUPS:
        for ep in entry_points(group=group):
            if (group, ep.name) in _loaded:
                continue
            _load(group, ep)
            _loaded.add((group, ep.name))
            new.append(f"{group}:{ep.name}")
    return new
