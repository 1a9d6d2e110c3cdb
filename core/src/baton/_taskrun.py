"""Task runs: what a runner receives to execute."""

from __future__ import annotations

import itertools
import logging
import threading
from typing import TYPE_CHECKING, Any, final

from baton import _admission
from baton._context import current_scope_var, current_task_run_var
from baton._engine import run_async, run_sync
from baton._futures import observer_raised
from baton._remote import RunCall
from baton._states import State, StateType

if TYPE_CHECKING:
    from baton._admission import Admission, Plan
    from baton._futures import Future
    from baton._limits_service import RunLimits
    from baton._otel import Trace
    from baton._remote import RemoteResult
    from baton._scope import RunScope
    from baton._task import Task

__all__ = ["TaskRun", "current_task_run"]

logger = logging.getLogger("baton")

_ids = itertools.count(1)
_current_task_run = current_task_run_var


def _held_by_current_run() -> frozenset[str]:
    """The limits the task run executing here holds (see `_admission.current_held`): a
    run on a worker has them in its scope (see `run_call`)."""
    run = _current_task_run.get()
    if run is None:
        scope = current_scope_var.get()
        return scope.held if scope is not None else _NOTHING
    limits = run.limits
    return limits.held if limits is not None else _NOTHING


_NOTHING: frozenset[str] = frozenset()
_admission.run_held = _held_by_current_run


def current_task_run() -> TaskRun | None:
    """The task run whose function is executing in this context, if any."""
    return _current_task_run.get()


@final
class TaskRun:
    """One run of a task with its arguments, as handed to a `TaskRunner`.

    A runner either calls `execute()` (or awaits `execute_async()` for an async
    task) in this process, which runs the engine and records the final state, or
    ships `call` elsewhere (it pickles with cloudpickle), runs it there with
    `baton.runners.run_call`, and applies the `RemoteResult` with `finish()`
    (reporting states heard meanwhile with `set_state()`).

    Before the runner sees it, every future in its arguments has been replaced by
    that future's result, and every run it waits for is final.

    For observers it also says where and after what it ran: `worker` (set as it
    starts), `upstream_ids` (the runs it waited for) and `parent_id` (the run whose
    task submitted it).
    """

    __slots__ = (
        "_name",
        "_native_upstreams",
        "args",
        "future",
        "id",
        "kwargs",
        "limits",
        "map_id",
        "map_index",
        "parent_id",
        "priority",
        "scope",
        "task",
        "trace",
        "upstream_ids",
        "wait_for",
        "worker",
    )

    def __init__(
        self,
        task: Task[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        scope: RunScope,
        wait_for: tuple[Any, ...] = (),
    ) -> None:
        self.id: int = next(_ids)
        self.task = task
        self.args = args
        self.kwargs = kwargs
        self.scope = scope
        self.wait_for = wait_for
        self.priority: int = task.options.priority
        """Among runs waiting for a worker or for resources, higher goes first: the
        task's `priority`, or the one given to this `.submit`/`.map`."""
        self.future: Future[Any]
        self._name: str | None = None
        self._native_upstreams: list[Future[Any]] | None = None
        self.map_id: int | None = None
        """For a run of a `.map`: the map's id (the same for all its runs, unique in
        this process); None for a run of `.submit` or a direct call."""
        self.map_index: int | None = None
        """For a run of a `.map`: its position in the map's input (0 for the first)."""
        self.trace: Trace | None = (
            None if scope.trace is None else scope.trace.child(scope.runner.name)
        )
        """With OpenTelemetry on: the trace context of the code that created the run, in
        which its attempts' spans are made (`call` carries it along). None otherwise."""
        self.worker: str | None = None
        """Where the run executes, set as it starts (None before, or when the runner
        does not say): the thread's name on ``thread`` and ``sync``, ``"pid N"`` on
        ``process``, the worker's address on ``dask``, ``"node ID pid N"`` on ``ray``."""
        self.upstream_ids: tuple[int, ...] = ()
        """The ids of the runs this one waited for (futures among its arguments and in
        ``wait_for``), in the order they were found."""
        parent = _current_task_run.get()
        self.parent_id: int | None = None if parent is None else parent.id
        """The id of the run whose task submitted (or called) this one, if any."""
        self.limits: Plan | Admission | None = None
        """Where the run stands with its flow's concurrency limits (None: no limit
        concerns it)."""

    @property
    def name(self) -> str:
        """The run's name: from the task's `task_run_name`, or `<task>-<3 hex digits>`."""
        name = self._name
        if name is None:
            name = self._name = self.task.run_name_for(self)
        return name

    @property
    def parameters(self) -> dict[str, Any]:
        """The call's arguments by parameter name, defaults included."""
        return self.task.parameters_of(self.args, self.kwargs)

    @property
    def resources(self) -> dict[str, float]:
        """What the run asks for (the task's `resources`), such as ``{"GPU": 1.0}``:
        held from its start until it is final. Do not change it."""
        return self.task.options.resources

    @property
    def state(self) -> State:
        """The run's current state."""
        return self.future._state

    @property
    def call(self) -> RunCall:
        """The run packed to travel: picklable, callable anywhere (see `run_call`)."""
        trace = self.trace
        return RunCall(
            self.task,
            self.id,
            self.name,
            self.args,
            self.kwargs,
            trace_context=None if trace is None else trace.carrier(),
            limits=None if self.scope.limiter is None else self.run_limits(),
        )

    def run_limits(self) -> RunLimits | None:
        """What a worker needs to honour the flow run's limits in this run (see
        `RunCall.limits`), or None when the flow run declares none."""
        # The flow's own limiter's, or a client's of it (the run was submitted on a worker).
        run_limits = self.scope.run_limits_of
        if run_limits is None:
            return None
        limits = self.limits
        return run_limits(limits.held if limits is not None else _NOTHING)

    def native_call(self) -> tuple[RunCall, list[Future[Any]]]:
        """For runners with native dependencies: the run packed with a placeholder for
        each upstream run, and those upstream futures in placeholder order.

        The runner passes each upstream's native handle (a Dask future, a Ray
        ObjectRef) where the engine substitutes results, or, for an upstream it did
        not run, that future's final State.
        """
        from baton._resolve import to_portable

        upstreams: list[Future[Any]] = []
        wait_for = to_portable(self.wait_for, upstreams) if self.wait_for else ()
        args = to_portable(self.args, upstreams)
        kwargs = to_portable(self.kwargs, upstreams)
        trace = self.trace
        carrier = None if trace is None else trace.carrier()
        limits = self.run_limits() if self.scope.limiter is not None else None
        call = RunCall(self.task, self.id, self.name, args, kwargs, wait_for, carrier, limits)
        self._native_upstreams = upstreams
        return call, upstreams

    # -- what runners call --------------------------------------------------------

    def set_running(self, worker: str | None = None, timestamp: float | None = None) -> bool:
        """Mark the run RUNNING, on `worker` if given (see `worker`), since `timestamp`
        (``time.time()`` where it started; default now). Returns False if it was
        cancelled meanwhile: skip it."""
        if not self.future._set_running(timestamp):
            return False
        if worker is not None:
            self.worker = worker
        observe = self.scope.observe
        if observe is not None:
            try:
                observe(self, self.future._state)
            except Exception:
                observer_raised(self)
        return True

    def mark_sent(self) -> bool:
        """Record that the run is leaving for a worker from where a cancellation could
        not take it back before it starts (a batch of runs that the worker runs one
        after another, say): from now on `Future.cancel()` returns False for it and it
        runs, reporting RUNNING when it starts, as usual. Returns False if the run is
        final (it was cancelled meanwhile): do not send it. A run that is RUNNING (sent
        again after its worker died) is left as it is.

        A runner that can still withdraw a run it sent (its engine drops a task that
        has not started) need not call this; a runner that marks a run RUNNING as it
        sends it (`set_running`) need not either. A new attempt (``Retrying``) can be
        cancelled again until it is sent."""
        return self.future._mark_sent()

    def set_state(self, state: State, worker: str | None = None) -> None:
        """Record a state the run reached (final ones complete the future); `worker`,
        if given, is where it runs now (a RUNNING state of a new attempt)."""
        if worker is not None:
            self.worker = worker
        if state.type is StateType.PENDING or state.type is StateType.RUNNING:
            self.future._set_interim(state)
            observe = self.scope.observe
            if observe is not None:
                try:
                    observe(self, state)
                except Exception:
                    observer_raised(self)
        else:
            if self._native_upstreams:
                # A failed upstream was consumed here (this run ended UpstreamFailed, or
                # received its exception through allow_failure), as the core does for
                # other runners: its failure is reported through this run, not twice.
                for upstream in self._native_upstreams:
                    if upstream.done() and not upstream._state.is_completed():
                        upstream._mark_observed()
            self.future._set_final(state)

    def finish(self, result: RemoteResult) -> None:
        """Apply what `run_call` reported from a worker: the runs the task submitted
        there that failed with nothing handling them are reported to this run's flow
        (which fails naming them, as for runs submitted in its own process), then the
        run ends in `result.state`."""
        if result.unhandled:
            self.scope.adopt_failures(self, result.unhandled)
        self.set_state(result.state)

    def execute(self) -> State:
        """Run the engine for this run in the calling thread and record its final state."""
        if self.task.is_async:
            from baton._portal import run_blocking

            return run_blocking(self.execute_async())
        if not self.set_running(threading.current_thread().name):
            return self.future._state
        token = _current_task_run.set(self)
        scope_token = self.scope.enter()
        try:
            state = run_sync(self, self.args, self.kwargs, self._on_retry, trace=self.trace)
        except BaseException as exc:  # Ctrl-C in the main thread: record it, then let it go
            self.future._set_final(
                State.crashed(
                    exc, f"Task run {self.name!r} was interrupted by {type(exc).__name__}."
                )
            )
            # The exception itself reaches the caller: the crash is not an unhandled one.
            self.future._mark_observed()
            raise
        finally:
            self.scope.exit(scope_token)
            _current_task_run.reset(token)
        self.future._set_final(state)
        return state

    async def execute_async(self) -> State:
        """Run the engine for this async run on the running event loop."""
        if not self.set_running(threading.current_thread().name):
            return self.future._state
        token = _current_task_run.set(self)
        scope_token = self.scope.enter()
        try:
            state = await self._async_engine()
        finally:
            self.scope.exit(scope_token)
            _current_task_run.reset(token)
        self.future._set_final(state)
        return state

    async def _async_engine(self) -> State:
        import asyncio

        try:
            return await run_async(self, self.args, self.kwargs, self._on_retry, trace=self.trace)
        except asyncio.CancelledError:
            return State.cancelled(f"Task run {self.name!r} was cancelled while running.")

    def _on_retry(self, state: State) -> None:
        self.set_state(state)

    def __repr__(self) -> str:
        return f"<TaskRun {self.name!r}>"
