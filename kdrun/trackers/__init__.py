"""Experiment trackers (``logger=tensorboard``, ``logger=mlflow``); see kdrun.trackers.base."""

from kdrun.trackers import mlflow_tracker, tensorboard  # noqa: F401  (register the back ends)
from kdrun.trackers.base import TRACKERS, Tracker, Trackers, make_trackers, register_tracker

__all__ = ["TRACKERS", "Tracker", "Trackers", "make_trackers", "register_tracker"]
