"""The task run whose function executes in this context, and the scope that runs
submitted here go to: a leaf module, so that a runner can ask whether a run is
submitted from inside a task without an import cycle."""

from __future__ import annotations

import contextvars
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from baton._scope import RunScope
    from baton._taskrun import TaskRun

__all__ = ["current_scope_var", "current_task_run_var"]

current_task_run_var: contextvars.ContextVar[TaskRun | None] = contextvars.ContextVar(
    "baton_task_run", default=None
)

current_scope_var: contextvars.ContextVar[RunScope | None] = contextvars.ContextVar(
    "baton_scope", default=None
)
