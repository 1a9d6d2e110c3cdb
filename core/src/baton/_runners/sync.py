"""The `sync` runner: runs each task at submit time, in the submitting thread."""

from __future__ import annotations

from typing import TYPE_CHECKING, final

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
        run.execute()
