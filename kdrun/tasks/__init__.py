"""Tasks: what kind of problem a job solves (image classification today); see tasks/base.py."""

from kdrun.tasks import classify  # noqa: F401  (registration)
from kdrun.tasks.base import TASKS, Task, register_task, task_named

__all__ = ["TASKS", "Task", "register_task", "task_named"]
