"""Experiments: what a job does with the engine. ``distill`` (teacher -> baseline -> student,
kdrun.experiments.pipeline) is the default kind; analyses run after it; sweeps summarise jobs.

Importing this package registers every built-in experiment kind.
"""

from kdrun.experiments import pipeline  # noqa: F401  (registration of the "distill" kind)
from kdrun.experiments.checks import validate
from kdrun.experiments.job import read_metrics, run_job
from kdrun.experiments.kinds import KINDS, register_kind, run_kind

__all__ = ["KINDS", "read_metrics", "register_kind", "run_job", "run_kind", "validate"]
