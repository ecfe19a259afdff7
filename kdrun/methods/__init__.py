"""Distillation methods, registered by name. Importing this package registers them all."""

from kdrun.methods import born_again, dml, kd, multi_teacher, takd  # noqa: F401  (registration)
from kdrun.methods.base import METHODS, BuildContext, Distiller, HardLabels, register_method

__all__ = ["METHODS", "BuildContext", "Distiller", "HardLabels", "register_method"]
