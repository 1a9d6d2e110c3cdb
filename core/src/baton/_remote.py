"""Runs executed away from the flow: the portable call, and running it on a worker.

`RunCall` is a task run packed to travel. `run_call` runs it wherever it arrived
(another thread, process or machine) with every rule the in-process engine has:
upstream values filled in (or the run ended UpstreamFailed), RUNNING reported,
attempts and hooks, timeouts in the engine or left to the runner, a `BaseException`
raised by the task recorded as a crash, and the runs the task submitted itself
waited for, with the failures nothing handled reported back to the flow. It returns
a `RemoteResult`, which `TaskRun.finish` applies in the flow's process.
"""

from __future__ import annotations

import contextlib
import contextvars
import pickle
import threading
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, final

from baton._admission import _NOTHING
from baton._attempts import Attempts, Retry, failure_state
from baton._engine import run_async, run_sync
from baton._states import LazyResult, State, StateType
from baton._travel import LARGE_BYTES, PROTOCOL, dumps, loads, portable_state

if TYPE_CHECKING:
    from baton._limits_service import RunLimits
    from baton._runner import TaskRunner
    from baton._scope import RunScope
    from baton._task import Task
    from baton._taskrun import TaskRun

__all__ = [
    "NestedFailure",
    "RemoteResult",
    "RunCall",
    "SlotLender",
    "current_runner",
    "decode_result",
    "encode_result",
    "lend_slot",
    "run_call",
]


@dataclass(frozen=True)
class RunCall:
    """A task run packed to travel: it pickles (with cloudpickle) and runs anywhere.

    `TaskRun.call` gives one whose arguments are plain values. For a runner with
    native dependencies, `TaskRun.native_call()` gives one whose arguments hold a
    placeholder for each upstream run; the worker then passes one value per upstream
    to `run_call` (or to the call itself): the upstream's plain result, or its final
    `State`. An upstream that did not complete (unless taken through
    `allow_failure`) ends the run UpstreamFailed without calling the function.

    Calling it runs the whole run here and returns its final State (retries and the
    engine's timeout included); `run_call` does the same and more (nested runs,
    RUNNING reports, a runner's own retries and timeouts).
    """

    task: Task[..., Any]
    """The task to run."""
    id: int
    """The run's id, as `TaskRun.id`."""
    name: str
    """The run's name, as `TaskRun.name`."""
    args: tuple[Any, ...]
    """The positional arguments: plain values, or with `Upstream` placeholders."""
    kwargs: dict[str, Any]
    """The keyword arguments, likewise."""
    wait_for: tuple[Any, ...] = ()
    """The placeholders of upstreams the run waits for without taking their results
    (in a native call only)."""
    trace_context: dict[str, str] | None = None
    """With OpenTelemetry on (``BATON_OPENTELEMETRY``), the run's trace context as W3C
    ``traceparent`` text: `run_call` makes each attempt a span of that trace. None
    otherwise. A runner that takes a call apart to send it must send this along."""

    @property
    def resources(self) -> dict[str, float]:
        """What the run asks for (the task's `resources`, as `TaskRun.resources`), for a
        worker that hands devices out (say, sets ``CUDA_VISIBLE_DEVICES``)."""
        return self.task.options.resources

    limits: RunLimits | None = None
    """How the run reaches its flow run's concurrency and rate limits from wherever it
    runs, and which limits' slots it holds (None: the flow run declares none).
    `run_call` applies it: a runner only has to send the call whole."""

    def fill(self, upstream: Sequence[Any]) -> tuple[tuple[Any, ...], dict[str, Any]] | State:
        """The arguments with each placeholder replaced by its upstream's value, or the
        final UpstreamFailed state when an upstream did not complete."""
        if not upstream:
            return self.args, self.kwargs
        from baton._resolve import UpstreamNotCompleted, fill_upstreams
        from baton._states import upstream_failed

        values = tuple(upstream)
        try:
            if self.wait_for:
                fill_upstreams(self.wait_for, values)
            return fill_upstreams(self.args, values), fill_upstreams(self.kwargs, values)
        except UpstreamNotCompleted as failed:
            return upstream_failed(self.name, failed.placeholder.name, failed.state)

    def allowed_upstreams(self) -> frozenset[int]:
        """The indices of the upstreams this call takes through `allow_failure`: their
        failure is passed in, not turned into UpstreamFailed. A runner whose engine
        does not run a task whose dependency failed waits for these upstreams and
        passes their final `State`."""
        from baton._resolve import Upstream, resolve_placeholders

        found: set[int] = set()

        def note(placeholder: Upstream) -> None:
            if placeholder.allowed:
                found.add(placeholder.index)

        for part in (self.args, self.kwargs, self.wait_for):
            resolve_placeholders(part, note)
        return frozenset(found)

    def __call__(self, *upstream: Any, first_attempt: int = 1) -> State:
        """Run the whole run here and return its final state: ``run_call(self,
        upstream, attempt=first_attempt).state``, with its defaults."""
        return run_call(self, upstream, attempt=first_attempt).state


@final
@dataclass(frozen=True)
class NestedFailure:
    """A run that a task submitted on its worker, which failed and nothing handled:
    reported to the flow, which fails naming it, as for runs it submitted itself."""

    name: str
    state: State


@final
@dataclass(frozen=True)
class RemoteResult:
    """What `run_call` reports: the state the run (or the attempt) ended in, the retry
    the attempt policy decided on when the runner makes the attempts, and the runs
    the task submitted that failed with nothing handling them.

    Apply it in the flow's process with `TaskRun.finish(result)` (or, when `retry`
    is set, report `retry.state` and send the run again after `retry.delay` seconds
    as attempt `retry.attempt`). It pickles when its states do: `portable()` makes
    sure of that for errors, `encode_result` also for results.
    """

    state: State
    retry: Retry | None = None
    unhandled: tuple[NestedFailure, ...] = ()
    attempt: int = 1

    def __reduce__(self) -> tuple[Any, ...]:
        # Plainer (and faster, both ways) than a dataclass's default: one per run.
        return (RemoteResult, (self.state, self.retry, self.unhandled, self.attempt))

    def portable(self) -> RemoteResult:
        """This result with every error that cannot be pickled replaced by a
        `RemoteTaskError` that keeps its type name, message and traceback text."""
        state = portable_state(self.state)
        unhandled = tuple(NestedFailure(f.name, portable_state(f.state)) for f in self.unhandled)
        if state is self.state and all(
            a.state is b.state for a, b in zip(unhandled, self.unhandled, strict=True)
        ):
            return self
        return RemoteResult(state, self.retry, unhandled, self.attempt)


class SlotLender(Protocol):
    """A worker pool whose worker can give its slot up while it waits for other runs
    (see `lend_slot`).

    `secede()` is called as a task starts to block on other runs (a nested
    `.result()`, `wait`), `rejoin()` as it stops; calls nest, and only the outermost
    pair counts. A pool whose workers lend their slot only inside a call of its
    engine (a Ray worker lends its CPU inside ``ray.wait``) may also define
    ``wait(ready, timeout, event=None) -> bool``, which blocks in the engine until
    ``ready()`` is true or `timeout` seconds pass (`event`, when given, is set once
    `ready()` is true: the pool may wait on it); waits for runs then go through it.
    """

    def secede(self) -> None:
        """The calling worker starts to wait for other runs: give its slot to another."""

    def rejoin(self) -> None:
        """The calling worker stops waiting: take a slot back (waiting for one if needed)."""


@contextlib.contextmanager
def lend_slot(pool: SlotLender | None) -> Iterator[None]:
    """Within this block, a task in the calling thread that waits for other runs
    gives its worker's slot up through `pool` (see `SlotLender`) while it waits;
    None lends nothing.

    A runner wraps `run_call` in it on a worker of a bounded pool whose nested runs
    go back to that same pool, so that a task waiting for them cannot deadlock it::

        with lend_slot(my_pool):
            result = run_call(call, nested=my_runner)
    """
    from baton._futures import _worker

    previous = getattr(_worker, "pool", None)
    _worker.pool = pool
    try:
        yield
    finally:
        _worker.pool = previous


def current_runner() -> TaskRunner | None:
    """The runner that runs submitted here go to: the innermost running flow's, or on a
    worker inside `run_call`, the one for the running task's nested runs. None
    outside of both."""
    from baton._context import current_scope_var as _current_scope

    scope = _current_scope.get()
    return scope.runner if scope is not None else None


# -- running a call on a worker ------------------------------------------------------------

_spare = threading.local()
_loops = threading.local()


def run_call(
    call: RunCall,
    upstream: Sequence[Any] = (),
    *,
    attempt: int = 1,
    retries: Literal["here", "runner"] = "here",
    timeout: Literal["engine", "runner"] = "engine",
    on_state: Callable[[State], None] | None = None,
    nested: TaskRunner | None = None,
) -> RemoteResult:
    """Run `call` here, on a worker, to a `RemoteResult`. Never raises.

    It fills in the upstream values (or ends the run UpstreamFailed), reports
    RUNNING, makes the attempts with the engine's rules (a `BaseException` raised by
    the task crashes the run, and is not retried), runs the task's hooks on the
    final state, and waits for the runs the task submitted.

    - `call`: from `TaskRun.call` or `TaskRun.native_call()`, sent here.
    - `upstream`: one value per upstream placeholder (its result, or its final State).
    - `attempt`: the number of the first attempt made here (a run sent again after a
      crash or a retry continues its count).
    - `retries="here"`: make every attempt here, sleeping between them; ``"runner"``:
      make one attempt and put the policy's decision in `RemoteResult.retry`, for a
      runner that retries itself (it can then also retry after a crash, or time each
      attempt). The hooks run only on the attempt that ends the run.
    - `timeout="engine"`: the engine enforces `timeout_seconds` (a sync function in a
      helper thread, a coroutine by cancelling it); ``"runner"``: the function is
      called directly and the runner stops it (kills the worker) at the deadline, see
      `Deadlines` and `timed_out`.
    - `on_state`: hears RUNNING as each attempt starts, and Retrying between attempts;
      a runner forwards these to `TaskRun.set_state` in the flow's process.
    - `nested`: the started runner that runs the task runs this run submits itself;
      by default a `thread` runner in this process. They are waited for before the
      run ends, and those that failed with nothing handling them are reported.
    """
    filled = call.fill(upstream)
    if isinstance(filled, State):
        return RemoteResult(filled, attempt=attempt)
    args, kwargs = filled
    del filled
    run = call if retries == "here" else _SingleAttempt(call)
    enforce = timeout == "engine"
    scope = _scope_for(call, nested)
    if call.trace_context is None:
        trace = scope.trace = None
    else:
        from baton._otel import from_carrier

        trace = scope.trace = from_carrier(call.trace_context)
    token = scope.enter()
    limits = call.limits
    if limits is None:
        if scope.limiter is not None:
            scope.set_limiter(None)
            scope.held = _NOTHING
    else:
        limiter = limits.limiter()
        if scope.limiter is not limiter:  # most often the one of the run before
            scope.set_limiter(limiter)
        scope.limits_block = True
        # What the run holds, for the runs it submits and its `concurrency` blocks: in
        # its scope, which is its own (cheaper than a context variable set and reset).
        scope.held = limits.held
    try:
        if on_state is not None:
            on_state(State.running())
        try:
            if call.task.is_async:
                state = _run_coroutine(
                    run_async(
                        run,
                        args,
                        kwargs,
                        on_state,
                        first_attempt=attempt,
                        enforce_timeout=enforce,
                        trace=trace,
                    )
                )
            else:
                state = run_sync(
                    run,
                    args,
                    kwargs,
                    on_state,
                    first_attempt=attempt,
                    enforce_timeout=enforce,
                    trace=trace,
                )
        except BaseException as exc:
            # The engine lets a KeyboardInterrupt in a main thread go on, as Ctrl-C; on a
            # worker the task raised it (or SystemExit): it crashes the run, as anywhere.
            state = Attempts(call, attempt).finish(failure_state(exc, call))
        del args, kwargs
    finally:
        scope.exit(token)
    retry = None
    if retries == "runner":
        attempts = Attempts(call, attempt)
        retry = attempts.after(state) if state.type is not StateType.COMPLETED else None
        if retry is None:
            state = attempts.finish(state)
    unhandled = _finish_scope(scope)
    return RemoteResult(state, retry, unhandled, attempt)


@final
class _SingleAttempt:
    """The run as the engine sees it for one attempt: its task without retries or hooks,
    which `run_call` applies itself."""

    __slots__ = ("id", "name", "task")

    def __init__(self, call: RunCall) -> None:
        self.id = call.id
        self.name = call.name
        self.task = _one_attempt(call.task)


_single: dict[int, tuple[Task[..., Any], Task[..., Any]]] = {}


def _one_attempt(task: Task[..., Any]) -> Task[..., Any]:
    cached = _single.get(id(task))
    if cached is not None and cached[0] is task:
        return cached[1]
    # No retries here: nor a delay, whose callable need not be called again to check it.
    single = task.with_options(retries=0, retry_delay_seconds=0, on_completion=(), on_failure=())
    if len(_single) > 256:
        _single.clear()
    _single[id(task)] = (task, single)
    return single


def _run_coroutine(coroutine: Coroutine[Any, Any, State]) -> State:
    """Run an async task's engine to its end from this (sync) worker thread.

    Where the worker lends its slot only inside its engine's own wait (a pool with
    `wait`), the coroutine runs on a helper thread while this thread waits there, so
    that an async task that awaits nested runs lends its slot as a sync one does.
    """
    import asyncio

    from baton._futures import _worker

    pool = getattr(_worker, "pool", None)
    pool_wait = getattr(pool, "wait", None)
    if pool_wait is None:
        loop = getattr(_loops, "loop", None)
        if loop is None or loop.is_closed():
            loop = _loops.loop = asyncio.new_event_loop()
        return loop.run_until_complete(coroutine)
    done = threading.Event()
    outcome: list[Any] = []
    context = contextvars.copy_context()

    def serve() -> None:
        try:
            outcome.append(context.run(asyncio.run, coroutine))
        except BaseException as exc:  # re-raised in the waiting thread
            outcome.append(exc)
        finally:
            done.set()

    helper = threading.Thread(target=serve, name="baton-async-run", daemon=True)
    helper.start()
    pool_wait(done.is_set, None, done)
    helper.join()
    result = outcome[0]
    if isinstance(result, BaseException):
        raise result
    state: State = result
    return state


# -- the runs a task submits on its worker -------------------------------------------------

_default_nested: TaskRunner | None = None
_default_lock = threading.Lock()


def _nested_runner() -> TaskRunner:
    global _default_nested
    runner = _default_nested
    if runner is None or runner.closed:
        with _default_lock:
            runner = _default_nested
            if runner is None or runner.closed:
                from baton._runners.thread import ThreadRunner

                made = ThreadRunner()
                # Runs a task submits on a worker run inside the worker its run holds:
                # the capacities it asked for are the flow's runner's, not enforced here.
                made.ignores_resources = True
                runner = _default_nested = made.start()
    return runner


def _scope_for(call: RunCall, nested: TaskRunner | None) -> RunScope:
    """A scope for the runs `call` submits; the last one, if it stayed unused, again."""
    runner = nested if nested is not None else _nested_runner()
    scope: RunScope | None = getattr(_spare, "scope", None)
    label = f"runs submitted inside task run {call.name!r}"
    if scope is not None and scope.runner is runner:
        _spare.scope = None
        scope.label = label
        return scope
    from baton._scope import RunScope

    return RunScope(runner, label)


def _finish_scope(scope: RunScope) -> tuple[NestedFailure, ...]:
    """Wait for the runs the task submitted and left running; the failures nothing
    handled, to report to the flow."""
    if not scope.busy():
        _spare.scope = scope
        return ()
    from baton._futures import _wait_until

    scope.drain_lazy_maps()
    _wait_until(lambda: scope.pending_count() == 0, None, scope.wait_all)
    scope.wait_all()
    return tuple(NestedFailure(f.name, f._state) for f in scope.unobserved_failures())


# -- results ------------------------------------------------------------------------------


_SCALARS = frozenset({int, float, bool, complex, type(None), str})


def encode_result(
    result: RemoteResult, task_name: str, run_name: str, buffers: list[Any] | None = None
) -> bytes:
    """`result` pickled to travel to the flow's process. A result value that cannot be
    pickled fails the run with an error that says so; errors that cannot travel are
    replaced (see `portable_state`).

    With `buffers`, large data in the result (NumPy arrays, large bytes: see `dumps`)
    is appended to it instead of copied into the pickle: send those buffers beside
    it (shared memory, say) and pass them to `decode_result`.
    """
    state = result.state
    if (
        state.type is StateType.COMPLETED
        and not result.unhandled
        and result.retry is None
        and state.name == "Completed"
        and state.message is None
    ):
        # The common case, as a plain tuple: a quarter of the cost, both ways.
        data = state._data
        kind = type(data)
        if kind in _SCALARS or (kind is bytes and len(data) < LARGE_BYTES):
            # Nothing to look for out of band, nothing cloudpickle would be needed for.
            return pickle.dumps((data, state.timestamp, result.attempt), PROTOCOL)
        if kind is not LazyResult and not isinstance(data, State):
            try:
                return dumps((data, state.timestamp, result.attempt), buffers)
            except Exception as exc:
                if buffers is not None:
                    del buffers[:]
                problem = f"{type(exc).__name__}: {exc}"
                return _unpicklable_result(result, task_name, run_name, problem)
    result = result.portable()
    try:
        return dumps(result, buffers)
    except Exception as exc:
        if buffers is not None:
            del buffers[:]
        if result.state.type is not StateType.COMPLETED:
            raise
        problem = f"{type(exc).__name__}: {exc}"
    return _unpicklable_result(result, task_name, run_name, problem)


def _unpicklable_result(result: RemoteResult, task_name: str, run_name: str, problem: str) -> bytes:
    error = pickle.PicklingError(
        f"Task run {run_name!r} (task {task_name!r}) returned a value that cannot be "
        f"pickled ({problem}), so it cannot travel back from its worker. Return something "
        "picklable (plain data, or a path to where the value was written), or run this "
        "task on the 'thread' runner."
    )
    failed = RemoteResult(State.failed(error), None, result.unhandled, result.attempt)
    return dumps(failed.portable())


def decode_result(
    blob: bytes | bytearray | memoryview, run: TaskRun, buffers: list[Any] | None = None
) -> RemoteResult:
    """A `RemoteResult` from `encode_result`, rebuilt here (with the out-of-band
    `buffers` it appended, in order). A result that cannot be unpickled here (its
    type is not importable in this process) fails the run with an error that says so."""
    try:
        loaded: Any = loads(blob, buffers) if buffers else pickle.loads(blob)
        if type(loaded) is tuple:
            value, timestamp, attempt = loaded
            state = State(StateType.COMPLETED, "Completed", data=value, timestamp=timestamp)
            return RemoteResult(state, None, (), attempt)
        result: RemoteResult = loaded
        return result
    except Exception as exc:
        error = pickle.UnpicklingError(
            f"The result of task run {run.name!r} (task {run.task.name!r}) came back from "
            f"its worker but cannot be unpickled here ({type(exc).__name__}: {exc}). Return "
            "plain data, or types importable in both places."
        )
        return RemoteResult(State.failed(error))
