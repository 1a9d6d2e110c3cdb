"""The task run whose function executes in this context: a leaf module, so that a
runner can ask whether a run is submitted from inside a task without an import cycle."""

from __future__ import annotations

import contextvars
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from baton._taskrun import TaskRun

__all__ = ["current_task_run_var"]

current_task_run_var: contextvars.ContextVar[TaskRun | None] = contextvars.ContextVar(
    "baton_task_run", default=None
)
