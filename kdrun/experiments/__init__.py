"""Experiments: what a job does with the engine. Experiment kinds (``distill``: teacher ->
baseline -> student, kdrun.experiments.pipeline, the default; ``condense``) and what they
share: the job context (context.py), analyses, the job's bookkeeping (job.py).

Importing this package registers every built-in experiment kind.
"""

from kdrun.experiments import condense, pipeline  # noqa: F401  (registration of the kinds)
from kdrun.experiments.checks import validate
from kdrun.experiments.job import read_metrics, run_job
from kdrun.experiments.kinds import KINDS, register_kind, run_kind

__all__ = ["KINDS", "read_metrics", "register_kind", "run_job", "run_kind", "validate"]
