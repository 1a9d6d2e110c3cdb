"""The `TaskRunner` base class that every runner, built in or plugged in, derives from."""

from __future__ import annotations

import abc
import copy
import enum
from typing import TYPE_CHECKING, Any, ClassVar

from baton._errors import RunnerClosedError, UnknownRunnerError

if TYPE_CHECKING:
    from types import TracebackType

    from typing_extensions import Self

    from baton._taskrun import TaskRun

__all__ = ["Capability", "TaskRunner"]


class Capability(str, enum.Enum):
    """What a runner can do beyond the basics. The conformance kit tests a capability
    only where the runner declares it."""

    ASYNC = "async"
    """Runs async tasks; many concurrent ones share an event loop."""
    NESTED = "nested"
    """Tasks may submit and map other tasks (and wait on them) without deadlocking."""
    PROCESSES = "processes"
    """Runs tasks outside the calling process (arguments and results are pickled)."""
    HARD_TIMEOUTS = "hard-timeouts"
    """Stops the work of a sync task that runs past its timeout."""
    CANCEL_RUNNING = "cancel-running"
    """Can stop a run that has already started."""
    CRASH_DETECTION = "crash-detection"
    """Reports CRASHED when the worker running a task dies."""
    CONNECT = "connect"
    """Connects to an existing cluster by address (URL forms such as dask://host:port)."""
    NATIVE_DEPENDENCIES = "native-dependencies"
    """Passes upstream results worker to worker, never through the driver."""
    PRIORITIES = "priorities"
    """Among runs waiting for a worker or for resources, starts higher `priority` first."""
    RESOURCES = "resources"
    """Honours a task's `resources`: runs whose requests together exceed a capacity
    never run at once, and a request no capacity can satisfy is an error at submit."""
    LIMITS = "limits"
    """Honours the flow run's concurrency and rate limits inside runs wherever they
    execute (`baton.concurrency`, `baton.rate_limit`, tagged runs that tasks submit on
    workers). Runners that execute runs in the flow's process have it for free; one
    that ships runs sends `TaskRun.call` (or `native_call()`) whole, with its
    `RunCall.limits`, to `run_call`."""

    def __str__(self) -> str:
        return self.value


class TaskRunner(abc.ABC):
    """Executes task runs somewhere: threads, processes, a cluster.

    A runner implements `submit`, and where it holds resources, `on_start` and
    `on_shutdown`. Everything else (mapping, argument resolution, dependencies,
    retries, timeouts, states) is done by the core, once, for every runner.

    >>> from baton import TaskRunner, flow, task
    >>> class InlineRunner(TaskRunner):
    ...     name = "inline"
    ...     def submit(self, run):
    ...         run.execute()
    >>> @task
    ... def inc(x):
    ...     return x + 1
    >>> @flow(task_runner=InlineRunner())
    ... def one():
    ...     return inc.submit(1).result()
    >>> one()
    2
    """

    name: ClassVar[str] = ""
    """The name users select the runner by (`task_runner="thread"`)."""
    capabilities: ClassVar[frozenset[Capability]] = frozenset()
    """The capabilities the runner declares."""
    url_schemes: ClassVar[tuple[str, ...]] = ()
    """URL schemes the runner accepts in `from_url` (for example ``("dask",)``)."""

    _status: str = "new"
    _flow_run_owned: bool = False
    # Set by a flow run that starts and shuts down this runner itself (a copy made for
    # it, or one it built from a name): the runner may keep warm resources between
    # flow runs then (the `process` runner's warm pools do).
    native_dependencies: ClassVar[bool] = False
    """True when the runner declares `Capability.NATIVE_DEPENDENCIES`: the core then
    hands it runs at once, with upstream futures of its own still in their arguments,
    and the runner builds the call with `TaskRun.native_call()`."""

    # -- lifecycle ----------------------------------------------------------------

    @property
    def started(self) -> bool:
        return self._status == "started"

    @property
    def closed(self) -> bool:
        return self._status == "closed"

    def start(self) -> Self:
        """Acquire the runner's resources. Calling it again does nothing."""
        if self._status == "closed":
            raise RunnerClosedError(
                f"Task runner {self.name!r} has been shut down and cannot start again; "
                "create a new one."
            )
        if self._status == "new":
            self.on_start()
            self._status = "started"
        return self

    def shutdown(self, wait: bool = True) -> None:
        """Release the runner's resources. With `wait`, let running work finish first.

        Calling it again does nothing; submitting afterwards raises `RunnerClosedError`.
        """
        if self._status == "closed":
            return
        was_started = self._status == "started"
        self._status = "closed"
        if was_started:
            self.on_shutdown(wait)

    def on_start(self) -> None:  # noqa: B027 - optional hook
        """Override to acquire resources (pools, connections)."""

    def on_shutdown(self, wait: bool) -> None:  # noqa: B027 - optional hook
        """Override to release resources acquired in `on_start`."""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shutdown(wait=exc_type is None)

    # -- work ---------------------------------------------------------------------

    @abc.abstractmethod
    def submit(self, run: TaskRun) -> None:
        """Start executing `run`: call `run.execute()` (or `await run.execute_async()`)
        in a worker, or ship `run.call` away and report its State with
        `run.set_state(...)`. Must not block until the run is done."""

    def cancel(self, run: TaskRun) -> bool:
        """Try to stop a run; its future is already marked CANCELLED if it had not started.

        Return True if the runner stopped or dropped the work. The core calls this once
        a run's `Future.cancel()` has marked it; called directly for a run that is not
        final, a runner must not drop work without giving the run a final state (the
        run would be waited for for ever): without `Capability.CANCEL_RUNNING`, return
        ``run.future.cancel()``, which marks it if it has not started and calls back.
        """
        return False

    # -- construction -------------------------------------------------------------

    def duplicate(self) -> Self:
        """A new, unstarted runner with the same configuration (one per flow run)."""
        new = copy.copy(self)
        new._status = "new"
        new._flow_run_owned = False
        return new

    @classmethod
    def from_url(cls, url: str) -> Self:
        """Build a runner from a URL such as ``dask://127.0.0.1:8786``."""
        raise UnknownRunnerError(f"Task runner {cls.name!r} does not accept URLs ({url!r}).")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} {self._status}>"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.capabilities = frozenset(Capability(c) for c in cls.capabilities)
        cls.native_dependencies = Capability.NATIVE_DEPENDENCIES in cls.capabilities
