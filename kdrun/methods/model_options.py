"""Model configs inside method options: ensemble members, teacher assistants, generations.

A method option that names a model is a partial model config laid over the run's teacher
config (its training recipe included): ``{}`` is the run's teacher again, ``{name: mlp,
hidden: [512]}`` an MLP trained with the teacher's recipe. It is checked like ``teacher``:
unknown keys, wrong types and unknown model names fail before anything is trained.
"""

from __future__ import annotations

import math
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from kdrun.config import ModelConfig
from kdrun.errors import ConfigError
from kdrun.models import MODELS
from kdrun.models.cifar import CIFAR_ARCHS, arch_of, depth_ok, snap_depth


def derived_model(base: DictConfig, overrides: dict[str, Any], where: str) -> DictConfig:
    """``base`` (a model config) with ``overrides`` laid over it; never loaded from a file."""
    try:
        given = OmegaConf.to_container(base, resolve=True) if isinstance(base, DictConfig) else base
        out = OmegaConf.merge(OmegaConf.structured(ModelConfig), given, overrides or {})
    except OmegaConfBaseException as e:
        raise ConfigError(
            f"{where}: {str(e).splitlines()[0]}; a model here takes the keys of a teacher "
            f"config (name, hidden, channels, width, depth, widen_factor, dropout, train)"
        ) from None
    if out.name not in MODELS:
        raise ConfigError(
            f"{where}: unknown model '{out.name}'; choose one of: {', '.join(sorted(MODELS))}"
        )
    out.checkpoint = None  # a derived model is trained here, never read from a file
    return out


def _geo(a: float, b: float) -> int:
    return max(1, round(math.sqrt(a * b)))


def midway_overrides(teacher: DictConfig, student: DictConfig) -> dict[str, Any]:
    """Overrides of the teacher config for a model between teacher and student in size.

    CIFAR families: the teacher's family at the valid depth halfway to the student's (or to
    half the teacher's when the student is of another family), one step below the teacher's
    depth when halfway is the teacher itself. The same other architecture on both ends:
    widths at the geometric mean. Different architectures: the teacher's at half width.
    """

    if teacher.name in CIFAR_ARCHS:
        ta = arch_of(teacher)
        if student.name in CIFAR_ARCHS and arch_of(student).family == ta.family:
            target = (ta.depth + arch_of(student).depth) / 2
        else:
            target = ta.depth / 2
        depth = snap_depth(ta.family, target)
        if depth >= ta.depth:
            smaller = [d for d in range(ta.depth - 1, 0, -1) if depth_ok(ta.family, d)]
            depth = smaller[0] if smaller else ta.depth
        return {"depth": depth}
    out: dict[str, Any] = {}
    same = teacher.name == student.name
    for key in ("hidden", "channels"):
        t = list(teacher[key])
        s = list(student[key])
        if same and len(t) == len(s):
            out[key] = [_geo(a, b) for a, b in zip(t, s, strict=True)]
        else:
            out[key] = [max(1, a // 2) for a in t]
    out["width"] = _geo(teacher.width, student.width) if same else max(1, teacher.width // 2)
    return out
