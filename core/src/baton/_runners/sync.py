"""The `sync` runner: runs each task at submit time, in the submitting thread."""

from __future__ import annotations

from typing import TYPE_CHECKING, final

from baton._portal import on_portal_thread
from baton._portal import submit as portal_submit
from baton._resources import ResourcePool, check_capacities
from baton._runner import Capability, TaskRunner

if TYPE_CHECKING:
    from collections.abc import Mapping

    from baton._taskrun import TaskRun

__all__ = ["SyncRunner"]


@final
class SyncRunner(TaskRunner):
    """Runs every task run to its end inside `submit`: no concurrency, for debugging.

    Breakpoints and tracebacks land in the flow's own thread, in submission order.
    An async run submitted by an async task is the exception: the submitting thread
    is then the event loop itself, which cannot block on it, so the run goes on that
    loop and runs as the submitting task awaits.
    Runs never wait, so priorities change nothing; `resources` declares capacities
    (``{"GPU": 1}``) only so that a request beyond them is an error, as elsewhere.
    """

    name = "sync"
    capabilities = frozenset(
        {
            Capability.NESTED,
            Capability.ASYNC,
            Capability.PRIORITIES,
            Capability.RESOURCES,
            Capability.LIMITS,
        }
    )

    def __init__(self, resources: Mapping[str, float] | None = None) -> None:
        self.resources = check_capacities("sync", resources)

    def submit(self, run: TaskRun) -> None:
        if run.task.options.resources:
            # One run at a time (nested runs too, inside their parent): only feasibility.
            ResourcePool("sync", self.resources or {}).check(run)
        if run.task.is_async and on_portal_thread():
            portal_submit(run.execute_async())
            return
        run.execute()
