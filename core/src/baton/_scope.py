"""Run scopes: where submitted task runs go, and who waits for them.

Every flow run has a scope holding its task runner; task runs submitted inside
the flow (also from inside its tasks) are tracked there until they are final, so
the flow can wait for all of them and fail loudly on failures nobody handled.
Runs submitted outside any flow go to one process-wide default scope.
"""

from __future__ import annotations

import atexit
import collections
import contextvars
import itertools
import logging
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from baton._admission import (
    _DIRECT,
    _NEW,
    _NOTHING,
    AWAITING_SLOT,
    _held,
    acquire_blocking,
    acquire_later,
    admission_for,
)
from baton._attempts import FINAL_STATE_TYPES
from baton._context import current_scope_var as _current_scope
from baton._context import current_task_run_var as _current_run
from baton._errors import RunnerClosedError
from baton._futures import Future, observer_raised, wait
from baton._resolve import resolve
from baton._states import LazyResult, State, StateType, upstream_failed

if TYPE_CHECKING:
    from baton._admission import Admission, Limiter, Plan, Plans
    from baton._limits_service import RunLimits
    from baton._map import LazyMap
    from baton._otel import Trace
    from baton._remote import NestedFailure
    from baton._runner import TaskRunner
    from baton._task import Task
    from baton._taskrun import TaskRun

__all__ = ["RunScope", "current_scope", "flow_ended", "flow_started"]

logger = logging.getLogger("baton")

_FAILED = FINAL_STATE_TYPES - {StateType.COMPLETED}
_COMPLETED = StateType.COMPLETED


Observer = Callable[["TaskRun", State], None]

# The runs waiting to be dispatched by the `_dispatch_later` call active on this thread.
_dispatching = threading.local()


def _one_at_a_time(
    kind: str, scope: RunScope, run: TaskRun, step: Callable[[RunScope, TaskRun], None]
) -> None:
    """`step(scope, run)`, and the steps of this `kind` it leads to in this thread, one
    after another from a queue rather than nested in one another's call stack; a step
    that raises fails its run."""
    queue: collections.deque[tuple[RunScope, TaskRun]] | None = getattr(_dispatching, kind, None)
    if queue is not None:
        queue.append((scope, run))
        return
    queue = collections.deque([(scope, run)])
    setattr(_dispatching, kind, queue)
    try:
        while queue:
            next_scope, next_run = queue.popleft()
            try:
                step(next_scope, next_run)
            except Exception as exc:
                next_run.future._set_final(State.failed(exc))
    finally:
        setattr(_dispatching, kind, None)


class _UpstreamFailed(Exception):
    def __init__(self, future: Future[Any]) -> None:
        self.future = future


def _upstream_value(future: Future[Any], allowed: bool) -> Any:
    state = future._state
    if state.type is _COMPLETED:
        data = state._data
        return data if type(data) is not LazyResult else data.get()
    future._mark_observed()
    if allowed:
        return state.result(raise_on_failure=False)
    raise _UpstreamFailed(future)


def _ids_of(upstreams: list[Future[Any]]) -> tuple[int, ...]:
    if len(upstreams) == 1:
        return (upstreams[0]._run.id,)
    return tuple(dict.fromkeys([u._run.id for u in upstreams]))


def _upstream_failed_state(run: TaskRun, upstream: Future[Any]) -> State:
    return upstream_failed(run.name, upstream._run.name, upstream._state)


class RunScope:
    """Tracks the task runs submitted under a flow run (or outside of any) and feeds
    them to its runner once their upstream runs are final."""

    def __init__(self, runner: TaskRunner, label: str, observe: Observer | None = None) -> None:
        self.runner = runner
        self.label = label
        self.observe = observe
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._pending: set[Future[Any]] = set()
        self._unobserved: dict[int, Future[Any]] = {}
        self._lazy_maps: list[LazyMap[Any]] = []
        self.trace: Trace | None = None
        """With OpenTelemetry on: the trace the runs submitted here start in."""
        self.on_submit: Callable[[TaskRun], None] | None = None
        """Told of each run submitted (or called directly) here: the progress bar
        counts them."""
        self.limiter: Limiter | None = None
        """The flow run's concurrency and rate limits, if it declares any."""
        self.owns_limiter = False
        # True in the scope of a run on a worker: its runs take their slots as they are
        # submitted, in the submitting task's thread (see `_limits.acquire_blocking`).
        self.limits_block = False
        self.held: frozenset[str] = _NOTHING
        """On a worker, in the scope of a run that holds slots of some limits: those
        limits (the runs it submits share them; see `_admission.current_held`)."""
        self._plans: Plans | None = None
        self.run_limits_of: Callable[[frozenset[str]], RunLimits] | None = None
        """What a run submitted here that holds some limits carries to its worker (see
        `TaskRun.run_limits`), if the limiter can say."""
        self.packed_limits: dict[frozenset[str], bytes | None] = {}
        """`RunLimits.to_bytes()` of those, by the limits held, for runners that send
        them with each run (filled by them)."""

    def set_limiter(self, limiter: Limiter | None) -> None:
        """Give the runs submitted here the concurrency and rate limits of `limiter`."""
        self.limiter = limiter
        self._plans = getattr(limiter, "plans", None)
        self.run_limits_of = getattr(limiter, "run_limits", None)
        if self.packed_limits:
            self.packed_limits = {}

    # -- context ------------------------------------------------------------------

    def enter(self) -> contextvars.Token[RunScope | None]:
        return _current_scope.set(self)

    def exit(self, token: contextvars.Token[RunScope | None]) -> None:
        _current_scope.reset(token)

    # -- submitting ---------------------------------------------------------------

    def plan_of(self, task: Task[..., Any]) -> Plan | None:
        """How runs of `task` submitted here now stand with the flow run's limits (None:
        no limit concerns them, or the flow run declares none)."""
        limiter = self.limiter
        if limiter is None:
            return None
        tags = task.options.tags
        held = _held.get()
        if not held:
            # What the task run submitting this holds, if any (`current_held`, inline).
            current = _current_run.get()
            if current is None:
                held = self.held
            elif current.limits is not None:
                held = current.limits.held
        plans = self._plans
        plan = plans.get((tags, held) if held else tags) if plans is not None else None
        if plan is None:
            return admission_for(limiter, tags)
        return plan if plan.held else None

    def submit(
        self,
        run: TaskRun,
        upstreams: list[Future[Any]],
        plan: Plan | None = None,
        planned: bool = False,
    ) -> Future[Any]:
        """Track `run` and hand it to the runner once `upstreams` are final. With
        `planned`, `plan` is `plan_of(run.task)` already (the runs of a `.map` ask once)."""
        runner = self.runner
        if runner.closed:
            raise RunnerClosedError(
                f"Cannot submit task run {run.name!r}: task runner {runner.name!r} of "
                f"{self.label} has been shut down. Submit from inside a running flow, or "
                "start a new runner."
            )
        future: Future[Any] = Future(run)
        run.future = future
        if self.limiter is not None:
            if not planned:
                plan = self.plan_of(run.task)
            run.limits = plan
            if plan is not None and plan.status == _NEW:
                if self.limits_block:
                    run.limits = acquire_blocking(plan)
                elif upstreams:
                    # It takes a slot only once it can run: the core waits for its upstreams.
                    upstreams = [u for u in upstreams if u._state.type not in _FINAL]
                    if upstreams:
                        with self._lock:
                            self._pending.add(future)
                        self._defer(run, upstreams)
                        return future
        with self._lock:
            self._pending.add(future)
        if self.on_submit is not None:
            self.on_submit(run)
        if upstreams:
            run.upstream_ids = _ids_of(upstreams)
            if runner.native_dependencies:
                # The runner wires upstream runs of its own into its engine's graph;
                # the core waits only for upstream runs that other runners execute.
                waiting = [
                    u
                    for u in upstreams
                    if u._state.type not in _FINAL and u._run.scope.runner is not runner
                ]
            else:
                waiting = [u for u in upstreams if u._state.type not in _FINAL]
            if waiting:
                self._defer(run, waiting)
                return future
        try:
            self._dispatch(run)
        except BaseException:
            with self._lock:
                self._pending.discard(future)
            raise
        return future

    def _defer(self, run: TaskRun, waiting: list[Future[Any]]) -> None:
        # One count per unfinished upstream plus one for registration itself, so a
        # callback that fires while others are still being registered cannot
        # dispatch early.
        count = [len(waiting) + 1]
        lock = threading.Lock()

        def upstream_done(_: Future[Any]) -> None:
            with lock:
                count[0] -= 1
                ready = count[0] == 0
            if ready:
                self._dispatch_later(run)

        for upstream in waiting:
            upstream._on_done(upstream_done)
        upstream_done(waiting[0])  # the registration's own count

    def _admit(self, run: TaskRun, plan: Plan) -> bool:
        """Take the run's concurrency slots: True if it may go to the runner now; else it
        waits PENDING (AwaitingConcurrencySlot) and goes once they free."""

        def queued() -> None:
            names = ", ".join(repr(name) for name in plan.needed)
            message = f"Waiting for a slot of concurrency limit {names}."
            run.set_state(State.pending(AWAITING_SLOT, message))

        return acquire_later(plan, run, queued)

    def dispatch_admitted(self, run: TaskRun) -> None:
        """Hand a run that got its slots to the runner (from the thread that freed them)."""
        _one_at_a_time("admitted", self, run, RunScope._submit_admitted)

    def _submit_admitted(self, run: TaskRun) -> None:
        if run.future._state.type is not StateType.PENDING:
            return  # cancelled meanwhile: its end gives the slots back
        if self.runner.closed:
            raise RunnerClosedError(
                f"Task run {run.name!r} could not start: task runner "
                f"{self.runner.name!r} of {self.label} was shut down while the "
                "run waited for a concurrency slot."
            )
        self.runner.submit(run)

    def _dispatch_later(self, run: TaskRun) -> None:
        # Dispatching one run can end it at once (UpstreamFailed, or a runner that runs
        # it inside `submit`), which dispatches its dependents from the same call stack.
        # Queue those instead of recursing, so a long chain never exhausts the stack.
        _one_at_a_time("queue", self, run, RunScope._dispatch)

    def _dispatch(self, run: TaskRun) -> None:
        """Resolve the run's inputs and hand it to the runner (or end it UpstreamFailed)."""
        if run.future._state.type is not StateType.PENDING:
            return  # cancelled while it waited for upstream runs
        if self.runner.native_dependencies:
            self._hand_over(run)  # the runner's engine resolves the inputs
            return
        try:
            if run.wait_for:
                resolve(run.wait_for, _upstream_value)
            args = run.args
            if args:
                run.args = resolve(args, _upstream_value)
            if run.kwargs:
                run.kwargs = resolve(run.kwargs, _upstream_value)
        except _UpstreamFailed as failed:
            run.future._set_final(_upstream_failed_state(run, failed.future))
            return
        self._hand_over(run)

    def _hand_over(self, run: TaskRun) -> None:
        """Take the run's concurrency slots and give it to the runner, or queue it for
        its slots (it goes once they free)."""
        runner = self.runner
        if runner.closed:
            raise RunnerClosedError(
                f"Task run {run.name!r} could not start: task runner {runner.name!r} of "
                f"{self.label} was shut down while the run waited for its upstream runs."
            )
        plan = run.limits
        if plan is not None and plan.status == _NEW:
            if plan.take():  # type: ignore[union-attr]  # only a Plan is NEW
                run.limits = plan.holding  # type: ignore[union-attr]
            elif not self._admit(run, _plan(plan)):
                return
        runner.submit(run)

    def run_inline(
        self, run: TaskRun, upstreams: list[Future[Any]], execute: bool = True
    ) -> Future[Any]:
        """Prepare `run` to run in the calling thread (a direct task call): wait for its
        upstreams, resolve its inputs, and (with `execute`) run it."""
        future: Future[Any] = Future(run)
        run.future = future
        if self.on_submit is not None:
            self.on_submit(run)
        if upstreams:
            run.upstream_ids = _ids_of(upstreams)
            wait(upstreams)
        try:
            if run.wait_for:
                resolve(run.wait_for, _upstream_value)
            run.args = resolve(run.args, _upstream_value)
            run.kwargs = resolve(run.kwargs, _upstream_value)
        except _UpstreamFailed as failed:
            future._set_final(_upstream_failed_state(run, failed.future))
            return future
        limiter = self.limiter
        if limiter is not None:
            plan = run.limits = admission_for(limiter, run.task.options.tags)
            if plan is not None and plan.status == _NEW:
                run.limits = acquire_blocking(plan)
        if execute:
            run.execute()
        return future

    def busy(self) -> bool:
        """Whether anything was submitted here that is running or failed unhandled."""
        with self._lock:
            return bool(self._pending or self._lazy_maps or self._unobserved)

    def adopt_failures(self, parent: TaskRun, failures: Sequence[NestedFailure]) -> None:
        """Record failures nothing handled among the runs `parent` submitted on a worker,
        as if they had been submitted here."""
        with self._lock:
            for failure in failures:
                record = _Reported(failure.name, failure.state, parent.id)
                self._unobserved[-next(_reported_ids)] = record  # type: ignore[assignment]

    def add_lazy_map(self, lazy: LazyMap[Any]) -> None:
        with self._lock:
            self._lazy_maps.append(lazy)

    # -- what futures report ------------------------------------------------------

    def run_finished(self, future: Future[Any], state: State, observe: bool = True) -> None:
        observer = self.observe if observe else None
        if observer is not None:
            try:
                observer(future._run, state)
            except Exception:
                observer_raised(future._run)
        if self.limiter is not None:
            limits = future._run.limits
            if limits is not None:
                if limits.status == _DIRECT:
                    # Took its slots at once (or needs none): nothing else changes that.
                    if limits.needed:
                        limits.give()  # type: ignore[union-attr]  # only a Plan is DIRECT
                elif limits.status != _NEW:
                    limits.end()
        with self._lock:
            self._pending.discard(future)
            if state.type in _FAILED and not future._observed:
                self._unobserved[future._run.id] = future
            if not self._pending:
                self._idle.notify_all()

    def failure_observed(self, future: Future[Any]) -> None:
        with self._lock:
            self._unobserved.pop(future._run.id, None)

    def runner_cancel(self, run: TaskRun) -> None:
        try:
            self.runner.cancel(run)
        except Exception:
            logger.exception("Task runner %r failed to cancel %r", self.runner.name, run)

    # -- ending -------------------------------------------------------------------

    def drain_lazy_maps(self) -> None:
        """Submit the rest of every lazy `.map` nobody iterated to its end."""
        while True:
            with self._lock:
                if not self._lazy_maps:
                    return
                lazy = self._lazy_maps.pop()
            lazy.drain()

    def wait_all(self, timeout: float | None = None) -> bool:
        """Block until no run submitted here is unfinished. False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._pending, timeout)

    def cancel_pending(self) -> int:
        """Cancel every run that has not started; returns how many were cancelled."""
        with self._lock:
            # Newest first: a downstream run is newer than its upstreams, and cancelling an
            # upstream before it would end it UpstreamFailed instead of CANCELLED.
            pending = sorted(self._pending, key=lambda f: f._run.id, reverse=True)
            lazy_maps, self._lazy_maps = self._lazy_maps, []
        for lazy in lazy_maps:
            lazy.close()
        return sum(1 for future in pending if future.cancel())

    def unobserved_failures(self) -> list[Future[Any]]:
        with self._lock:
            return sorted(self._unobserved.values(), key=_run_order)

    @staticmethod
    def name_runs(futures: list[Future[Any]], shown: int = 5) -> str:
        """The first `shown` runs by name and state, and how many more there are."""
        names = ", ".join(f"{f.name!r} ({f._state!r})" for f in futures[:shown])
        return names + (f" and {len(futures) - shown} more" if len(futures) > shown else "")

    def pending_count(self) -> int:
        with self._lock:
            return len(self._pending)


_FINAL = FINAL_STATE_TYPES


def _plan(limits: Plan | Admission) -> Plan:
    # Only a plan is NEW: an admission is made once its run asks for its slots.
    return limits  # type: ignore[return-value]


_reported_ids = itertools.count(1)


class _Reported:
    """A failed run submitted on a worker that nothing handled, as the flow names it."""

    __slots__ = ("_state", "name", "parent_id")

    def __init__(self, name: str, state: State, parent_id: int) -> None:
        self.name = name
        self._state = state
        self.parent_id = parent_id

    @property
    def state(self) -> State:
        return self._state


def _run_order(item: Any) -> tuple[int, int]:
    if type(item) is _Reported:
        return (item.parent_id, 1)
    return (item._run.id, 0)


_default_lock = threading.Lock()
_default: RunScope | None = None


# The scopes of the flow runs going on in this process, each with the scope it was
# started in (its parent flow's, or None): for runs submitted from a thread that did
# not inherit a scope (a thread pool the user made inside a flow).
_flows_lock = threading.Lock()
_running_flows: dict[RunScope, RunScope | None] = {}


def flow_started(scope: RunScope) -> None:
    """Record a flow run's scope while its function runs (see `current_scope`)."""
    with _flows_lock:
        _running_flows[scope] = _current_scope.get()


def flow_ended(scope: RunScope) -> None:
    with _flows_lock:
        _running_flows.pop(scope, None)


def _running_flow_scope() -> RunScope | None:
    """The innermost flow scope if the flow runs going on form one chain of subflows;
    None if no flow runs; an error naming the fix if several run side by side."""
    with _flows_lock:
        if not _running_flows:
            return None
        parents = {parent for parent in _running_flows.values() if parent is not None}
        innermost = [scope for scope in _running_flows if scope not in parents]
    if len(innermost) == 1:
        return innermost[0]
    names = ", ".join(sorted(scope.label for scope in innermost))
    raise RuntimeError(
        f"A task run was submitted from a thread that belongs to no flow while "
        f"{len(innermost)} flow runs go on in this process ({names}), so Baton cannot "
        "tell which flow it belongs to. Start the thread's work in the flow's context: "
        "executor.submit(contextvars.copy_context().run, fn, ...) from inside the flow, "
        "or submit from the flow's own thread."
    )


def current_scope() -> RunScope:
    """The scope of the innermost running flow, or the process-wide default scope.

    A thread that inherited no scope (one the user started inside a flow) submits to
    the flow that is running in this process, if exactly one is.
    """
    scope = _current_scope.get()
    if scope is not None:
        return scope
    if _running_flows:
        running = _running_flow_scope()
        if running is not None:
            return running
    return _default_scope()


def _default_scope() -> RunScope:
    global _default
    scope = _default
    if scope is not None and not scope.runner.closed:
        return scope
    with _default_lock:
        if _default is None or _default.runner.closed:
            from baton._plugins import create_runner
            from baton._settings import get_settings

            runner = create_runner(get_settings().task_runner)
            runner.start()
            _default = RunScope(runner, "runs submitted outside a flow")
        return _default


@atexit.register
def _close_default_scope() -> None:
    scope = _default
    if scope is None or scope.runner.closed:
        return
    try:
        scope.drain_lazy_maps()
    except Exception:  # the runs already submitted still get waited for below
        logger.exception("A .map submitted outside a flow failed while finishing its input")
    scope.wait_all()
    for future in scope.unobserved_failures():
        logger.error(
            "Task run %r (submitted outside a flow) failed and nothing handled it: %r",
            future._run.name,
            future._state,
        )
    scope.runner.shutdown()
