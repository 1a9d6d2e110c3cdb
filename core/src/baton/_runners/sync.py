"""The `sync` runner: runs each task at submit time, in the submitting thread."""

from __future__ import annotations

from typing import TYPE_CHECKING, final

from baton._runner import Capability, TaskRunner

if TYPE_CHECKING:
    from baton._taskrun import TaskRun

__all__ = ["SyncRunner"]


@final
class SyncRunner(TaskRunner):
    """Runs every task run to its end inside `submit`: no concurrency, for debugging.

    Breakpoints and tracebacks land in the flow's own thread, in submission order.
    """

    name = "sync"
    capabilities = frozenset({Capability.NESTED, Capability.ASYNC, Capability.LIMITS})

    def submit(self, run: TaskRun) -> None:
        run.execute()
