"""Distillation methods, registered by name. Importing this package registers them all."""

from kdrun.methods import kd  # noqa: F401  (registers "kd")
from kdrun.methods.base import METHODS, BuildContext, Distiller, HardLabels, register_method

__all__ = ["METHODS", "BuildContext", "Distiller", "HardLabels", "register_method"]
