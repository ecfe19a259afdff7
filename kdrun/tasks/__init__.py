"""Tasks: what kind of problem a job solves (image classification, causal language
modelling); see tasks/base.py."""

from kdrun.tasks import classify, kg, lm  # noqa: F401  (registration)
from kdrun.tasks.base import TASKS, Column, Task, register_task, task_named

__all__ = ["TASKS", "Column", "Task", "register_task", "task_named"]
