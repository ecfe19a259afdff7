"""Distillation methods, registered by name. Importing this package registers them all."""

# One import per method module (each registers itself by name).
import kdrun.methods.at  # noqa: F401
import kdrun.methods.born_again  # noqa: F401
import kdrun.methods.crd  # noqa: F401
import kdrun.methods.ctkd  # noqa: F401
import kdrun.methods.data_free  # noqa: F401
import kdrun.methods.dist  # noqa: F401
import kdrun.methods.dkd  # noqa: F401
import kdrun.methods.dml  # noqa: F401
import kdrun.methods.fitnet  # noqa: F401
import kdrun.methods.kd  # noqa: F401
import kdrun.methods.lm  # noqa: F401  (the lm task's methods: LM_METHODS)
import kdrun.methods.mlkd  # noqa: F401
import kdrun.methods.multi_teacher  # noqa: F401
import kdrun.methods.nkd  # noqa: F401
import kdrun.methods.reviewkd  # noqa: F401
import kdrun.methods.rkd  # noqa: F401
import kdrun.methods.sp  # noqa: F401
import kdrun.methods.takd  # noqa: F401
from kdrun.methods.base import (
    METHODS,
    BuildContext,
    Distiller,
    HardLabels,
    register_method,
    unknown_option,
)
from kdrun.methods.lm import LM_METHODS, LMHardLabels

__all__ = [
    "LM_METHODS",
    "METHODS",
    "BuildContext",
    "Distiller",
    "HardLabels",
    "LMHardLabels",
    "register_method",
    "unknown_option",
]
