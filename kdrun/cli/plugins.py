"""Methods, models and data sets from other packages, through Python entry points.

An installed distribution adds them without touching kdrun, in three entry-point groups
(pyproject.toml of the plugin):

    [project.entry-points."kdrun.methods"]
    toy_kd = "kdrun_toy.methods:ToyKD"     # a Distiller subclass: registered under "toy_kd"
    [project.entry-points."kdrun.models"]
    toy_mlp = "kdrun_toy.models:build"     # a builder (cfg, in_shape, num_classes) -> nn.Module
    [project.entry-points."kdrun.datasets"]
    toy = "kdrun_toy.data"                 # a module whose import calls register_dataset

Any entry point may also name a module that registers its names itself on import
(``register_method`` / ``register_model`` / ``register_dataset``). Its YAML (e.g.
``method/toy_kd.yaml``) lives in the plugin's own config directory, added to Hydra's search
path on the command line: ``kdrun --config-dir DIR method=toy_kd``.
"""

from __future__ import annotations

import inspect
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from kdrun.data import DATASETS
from kdrun.errors import ConfigError, one_line
from kdrun.methods import METHODS, Distiller, register_method
from kdrun.models import MODELS, register_model

GROUPS: dict[str, tuple[str, dict[str, Any]]] = {
    "kdrun.methods": ("method", METHODS),
    "kdrun.models": ("model", MODELS),
    "kdrun.datasets": ("data set", DATASETS),
}
_loaded: set[tuple[str, str]] = set()


def _register(group: str, name: str, obj: Any) -> None:
    """Register what an entry point named, unless importing it already did."""
    registry = GROUPS[group][1]
    if name in registry or inspect.ismodule(obj):
        return
    if group == "kdrun.methods" and isinstance(obj, type) and issubclass(obj, Distiller):
        register_method(name)(obj)
    elif group == "kdrun.models" and callable(obj):
        register_model(name)(obj)


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
