"""A plugin model's or data set's own config fields: ``teacher.options``, ``student.options``
and ``dataset.options``, merged onto the dataclass the plugin registered
(``register_model(name, options=Cls)``, ``register_dataset(..., options=Cls)``).

The schema cannot list a plugin's fields, so ``options`` is an open dict there; this module
gives it the schema's checks back (an unknown key with the closest one, a wrong type, the
defaults filled in) before anything is trained, and hands a builder or loader its typed
options: ``model_options(cfg)`` / ``dataset_options(cfg)``.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import fields
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from kdrun.data import DATASETS
from kdrun.errors import ConfigError
from kdrun.models import MODEL_OPTIONS


def _given(node: Any) -> dict[str, Any]:
    if node is None:
        return {}
    if isinstance(node, DictConfig):
        return OmegaConf.to_container(node, resolve=True)  # type: ignore[return-value]
    return dict(node)


def typed_options(
    prefix: str,
    owner: str,
    cls: type | None,
    given: Any,
    unknown: Callable[[str, list[str]], str] | None = None,
) -> Any:
    """``given`` merged onto ``cls`` (a dataclass instance); one-line ConfigError for a key
    ``cls`` lacks (with the closest), a value of the wrong type, or options given to an
    ``owner`` that registered none. ``prefix`` is where they sit, e.g. ``student.options``;
    ``unknown(key, known)``: the unknown key's message, where its owner words it (methods)."""
    values = _given(given)
    if cls is None:
        if values:
            raise ConfigError(
                f"{owner} takes no options, but {prefix} has {', '.join(map(str, values))}; "
                f"remove {prefix} (only a plugin that registers options reads them)"
            )
        return None
    known = [f.name for f in fields(cls)]
    for key in values:
        if key not in known and unknown is not None:
            raise ConfigError(unknown(str(key), known))
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
            hint = f"did you mean '{prefix}.{close[0]}'? " if close else ""
            raise ConfigError(
                f"unknown config key '{prefix}.{key}' for {owner}; {hint}"
                f"its options are: {', '.join(known) or '(none)'}"
            )
    try:
        merged = OmegaConf.merge(OmegaConf.structured(cls), values)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        raise ConfigError(
            f"bad option {prefix}.{key} for {owner} ({str(e).splitlines()[0]}); "
            f"its options are: {', '.join(known)}"
        ) from None
    return OmegaConf.to_object(merged)


def model_options(cfg: Any, role: str = "model") -> Any:
    """The typed options of a model section (``cfg``: teacher, student or a method's model);
    None for a model that registered none."""
    name = str(cfg.name)
    opts = cfg.get("options") if hasattr(cfg, "get") else getattr(cfg, "options", None)
    return typed_options(f"{role}.options", f"model '{name}'", MODEL_OPTIONS.get(name), opts)


def dataset_options(cfg: Any) -> Any:
    """The typed options of the dataset section; None for a data set that registered none."""
    name = str(cfg.name)
    spec = DATASETS.get(name)
    opts = cfg.get("options") if hasattr(cfg, "get") else getattr(cfg, "options", None)
    cls = spec.options if spec is not None else None
    return typed_options("dataset.options", f"data set '{name}'", cls, opts)


def check_options(cfg: DictConfig) -> None:
    """Every options section of a job: unknown keys and wrong types fail here, at once."""
    for role in ("teacher", "student"):
        model_options(cfg[role], role)
    dataset_options(cfg.dataset)
