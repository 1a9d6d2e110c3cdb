"""The engine: runs one task run to a final State, wherever a runner executes it.

This module is the only place that knows the rules of a single run: calling the
function (sync or async), retries with delays, backoff, jitter and a condition,
timeouts, the completion and failure hooks, and turning every outcome into a
final State. It holds no reference to runners, flows or futures, and everything
it needs travels in a picklable `RunCall` (see `baton._remote`), so a runner can ship
it to another process or machine and send back the State it returns. Whether to try
again after an attempt is `Attempts`' decision (`baton._attempts`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from baton._attempts import Attempts, failure_state
from baton._errors import TaskTimeoutError
from baton._states import State, StateType

if TYPE_CHECKING:
    from baton._otel import Trace
    from baton._task import Task

__all__ = ["RunInfo", "run_async", "run_sync"]

logger = logging.getLogger("baton.engine")


class RunInfo(Protocol):
    """What the engine and hooks know of a run: its id, its name and its task."""

    @property
    def id(self) -> int: ...
    @property
    def name(self) -> str: ...
    @property
    def task(self) -> Task[..., Any]: ...


StateCallback = Callable[[State], None]


_MAIN = threading.main_thread()


class _TimeoutInterrupt(BaseException):
    """Raised inside a thread whose task ran past its timeout, to stop pure-Python work."""


def _timeout_error(run: RunInfo, seconds: float) -> TaskTimeoutError:
    return TaskTimeoutError(f"Task run {run.name!r} exceeded its timeout of {seconds:g} s.")


def _call_with_timeout(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    seconds: float,
    run: RunInfo,
) -> Any:
    """Call `fn` in a helper thread and stop waiting for it after `seconds`.

    A thread cannot be killed. On timeout the run ends on time regardless, and the
    helper thread is asked to stop by raising an exception inside it; pure-Python
    code stops at its next bytecode, code blocked in C stops when the call returns.
    """
    import contextvars

    from baton._futures import blocking_section

    outcome: list[Any] = []
    context = contextvars.copy_context()

    def target() -> None:
        try:
            outcome.append((True, context.run(fn, *args, **kwargs)))
        except _TimeoutInterrupt:
            pass
        except BaseException as exc:  # reported in the caller's thread
            outcome.append((False, exc))

    helper = threading.Thread(target=target, name=f"baton-timeout-{run.name}", daemon=True)
    helper.start()
    with blocking_section():
        # A wait longer than threading.TIMEOUT_MAX (some 292 years) overflows: wait in
        # pieces, so that any finite timeout the options accept works.
        deadline = time.monotonic() + seconds
        remaining = seconds
        while remaining > 0:
            helper.join(min(remaining, threading.TIMEOUT_MAX))
            if not helper.is_alive():
                break
            remaining = deadline - time.monotonic()
    if helper.is_alive():
        import ctypes

        ident = helper.ident
        if ident is not None:
            ctypes.pythonapi.PyThreadState_SetAsyncExc(
                ctypes.c_ulong(ident), ctypes.py_object(_TimeoutInterrupt)
            )
        raise _timeout_error(run, seconds)
    ok, value = outcome[0]
    if ok:
        return value
    raise value


# Results that are neither a State nor a future: no need to look closer.
_PLAIN_RESULTS = frozenset({int, float, str, bytes, bool, type(None), list, dict, tuple, set})


class _ReturnedState(Exception):
    """A task returned a State that is not COMPLETED: it ends the attempt like a raise."""

    def __init__(self, state: State) -> None:
        super().__init__(state.message)
        self.state = state


def _adopt(value: Any) -> State:
    """The state of an attempt that returned `value`: a returned `State` is adopted (a
    failed one counts as a failure, for retries too), a returned `Future` is waited
    for and stands for its result (its failure is this attempt's), anything else is
    the result."""
    if type(value) in _PLAIN_RESULTS:
        return State.completed(value)
    from baton._futures import Future, FutureList

    if isinstance(value, Future):
        return _adopt(value.result())
    if type(value) is FutureList:
        return _adopt(value.result())
    if not isinstance(value, State):
        return State.completed(value)
    if value.type is StateType.COMPLETED:
        return value
    if value.is_final():
        raise _ReturnedState(value)
    raise _ReturnedState(
        State.failed(
            TypeError(
                f"The task returned the non-final state {value!r}; return a final state "
                "(State.completed(...), State.failed(...)) or a plain value."
            )
        )
    )


async def _awaited(value: Any) -> Any:
    """A returned future awaited without blocking the event loop (see `_adopt`)."""
    from baton._futures import Future, FutureList

    if isinstance(value, Future):
        return await _awaited(await value)
    if type(value) is FutureList:
        return [await future for future in value]
    return value


def run_sync(
    run: RunInfo,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    on_state: StateCallback | None = None,
    *,
    first_attempt: int = 1,
    enforce_timeout: bool = True,
    trace: Trace | None = None,
) -> State:
    """Run a synchronous task function to a final State. Never raises.

    `first_attempt` numbers the first attempt made here: a runner that retries a run
    itself (its worker died) continues the count. With `enforce_timeout=False` the
    function is called directly and the caller enforces `timeout_seconds` (a
    process runner kills the worker instead). With a `trace` (OpenTelemetry on), each
    attempt is a span in it, and the function runs inside that span.
    """
    timeout = run.task.options.timeout_seconds if enforce_timeout else None
    attempts = Attempts(run, first_attempt, on_state)
    if trace is not None:
        return _traced_sync(run, args, kwargs, timeout, attempts, trace)
    state = _attempt_sync(run, args, kwargs, timeout)
    while (delay := attempts.retry_in(state)) is not None:
        if delay:
            time.sleep(delay)
        attempts.resume()
        state = _attempt_sync(run, args, kwargs, timeout)
    return attempts.finish(state)


def _traced_sync(
    run: RunInfo,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    timeout: float | None,
    attempts: Attempts,
    trace: Trace,
) -> State:
    """`run_sync`'s attempts, each in its own span."""
    from baton._otel import attempt_span

    while True:
        with attempt_span(trace, run.task.name, run.name, attempts.number) as ended:
            state = ended(_attempt_sync(run, args, kwargs, timeout))
        delay = attempts.retry_in(state)
        if delay is None:
            return attempts.finish(state)
        if delay:
            time.sleep(delay)
        attempts.resume()


def _attempt_sync(
    run: RunInfo, args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float | None
) -> State:
    try:
        if timeout is None:
            return _adopt(run.task.fn(*args, **kwargs))
        return _adopt(_call_with_timeout(run.task.fn, args, kwargs, timeout, run))
    except _ReturnedState as returned:
        return returned.state
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt) and threading.current_thread() is _MAIN:
            # Ctrl-C reaching a task that runs in the main thread (sync runner, a direct
            # call) interrupts the flow; the caller records the crash.
            raise
        return failure_state(exc, run)


async def run_async(
    run: RunInfo,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    on_state: StateCallback | None = None,
    *,
    first_attempt: int = 1,
    enforce_timeout: bool = True,
    trace: Trace | None = None,
) -> State:
    """Run an async task function to a final State in the running event loop. Never raises.

    A timeout cancels the coroutine, so the work stops at its next `await`.
    `first_attempt`, `enforce_timeout` and `trace` are as for `run_sync`.
    """
    import asyncio

    timeout = run.task.options.timeout_seconds if enforce_timeout else None
    attempts = Attempts(run, first_attempt, on_state)
    if trace is not None:
        from baton._otel import attempt_span

        while True:
            with attempt_span(trace, run.task.name, run.name, attempts.number) as ended:
                state = ended(await _attempt_async(run, args, kwargs, timeout, attempts))
            delay = attempts.retry_in(state)
            if delay is None:
                return attempts.finish(state)
            if delay:
                await asyncio.sleep(delay)
            attempts.resume()
    state = await _attempt_async(run, args, kwargs, timeout, attempts)
    while (delay := attempts.retry_in(state)) is not None:
        if delay:
            await asyncio.sleep(delay)
        attempts.resume()
        state = await _attempt_async(run, args, kwargs, timeout, attempts)
    return attempts.finish(state)


async def _attempt_async(
    run: RunInfo,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    timeout: float | None,
    attempts: Attempts,
) -> State:
    import asyncio

    try:
        if timeout is None:
            return _adopt(await _awaited(await run.task.fn(*args, **kwargs)))
        return await _timed_coroutine(run, args, kwargs, timeout, attempts)
    except _ReturnedState as returned:
        return returned.state
    except asyncio.CancelledError:
        if asyncio.current_task() is not None and _being_cancelled():
            raise
        return State.cancelled(f"Task run {run.name!r} was cancelled while running.")
    except BaseException as exc:
        return failure_state(exc, run)


async def _timed_coroutine(
    run: RunInfo,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    timeout: float,
    attempts: Attempts,
) -> State:
    """One attempt of an async task under its timeout: an anyio cancel scope ends it at
    its next `await`; a coroutine that blocks the event loop past its deadline (so that
    no timer can fire) is ended by the watchdog, from its own thread, on time."""
    import anyio

    from baton._watchdog import watching

    report = attempts.report

    def overran() -> None:
        if report is not None:
            report(State.failed(_timeout_error(run, timeout), name="TimedOut"))

    work = run.task.fn(*args, **kwargs)
    with watching(timeout, overran, run.name, work) as guard:
        try:
            with anyio.fail_after(timeout):
                value = await work
        except TimeoutError:
            raise _timeout_error(run, timeout) from None
    if guard.overran:
        # Already ended TimedOut by the watchdog: this attempt is the last.
        attempts.stop()
        raise _timeout_error(run, timeout)
    return _adopt(await _awaited(value))


def _being_cancelled() -> bool:
    import asyncio

    current = asyncio.current_task()
    cancelling = getattr(current, "cancelling", None)
    return bool(cancelling()) if cancelling is not None else False
