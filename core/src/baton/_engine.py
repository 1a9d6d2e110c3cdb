"""The engine: runs one task run to a final State, wherever a runner executes it.

This module is the only place that knows the rules of a single run: calling the
function (sync or async), retries with delays, backoff, jitter and a condition,
timeouts, the completion and failure hooks, and turning every outcome into a
final State. It holds no reference to runners, flows or futures, and everything
it needs travels in a picklable `EngineCall`, so a runner can ship it to another
process or machine and send back the State it returns.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from baton._errors import TaskTimeoutError
from baton._states import State, StateType

if TYPE_CHECKING:
    from baton._task import Task

__all__ = ["EngineCall", "NativeCall", "RunInfo", "run_async", "run_sync"]

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


@dataclass(frozen=True)
class EngineCall:
    """A task run packed to travel: call it (in any process) to run the engine.

    Out-of-process runners pickle this object (with cloudpickle), call it on the
    worker and report the returned State with `TaskRun.set_state`.
    """

    task: Task[..., Any]
    id: int
    name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]

    def __call__(self) -> State:
        if self.task.is_async:
            import asyncio

            return asyncio.run(run_async(self, self.args, self.kwargs))
        return run_sync(self, self.args, self.kwargs)


@dataclass(frozen=True)
class NativeCall:
    """A task run packed for an engine that passes upstream results itself (Dask, Ray).

    Its arguments hold `Upstream` placeholders instead of futures; call it with one
    value per upstream, in the order `TaskRun.native_call()` gave the futures: either
    the upstream's final `State`, or its plain result. An upstream that did not
    complete (unless wrapped in `allow_failure`) ends the run `UpstreamFailed`
    without calling the function.
    """

    task: Task[..., Any]
    id: int
    name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    wait_for: tuple[Any, ...] = ()

    def fill(self, upstream: tuple[Any, ...]) -> tuple[tuple[Any, ...], dict[str, Any]] | State:
        """The arguments with each placeholder replaced by its upstream's value, or the
        final `UpstreamFailed` state when an upstream did not complete."""
        from baton._resolve import UpstreamNotCompleted, fill_upstreams
        from baton._states import upstream_failed

        try:
            if self.wait_for:
                fill_upstreams(self.wait_for, upstream)
            return fill_upstreams(self.args, upstream), fill_upstreams(self.kwargs, upstream)
        except UpstreamNotCompleted as failed:
            return upstream_failed(self.name, failed.placeholder.name, failed.state)

    def __call__(self, *upstream: Any, first_attempt: int = 1) -> State:
        """Run it here to its final state; `first_attempt` continues a count of attempts
        (a run sent again after its worker died)."""
        filled = self.fill(upstream)
        if isinstance(filled, State):
            return filled
        args, kwargs = filled
        if self.task.is_async:
            import asyncio

            return asyncio.run(run_async(self, args, kwargs, first_attempt=first_attempt))
        return run_sync(self, args, kwargs, first_attempt=first_attempt)


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
        helper.join(seconds)
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


def _final_state(exc: BaseException, run: RunInfo) -> State:
    if isinstance(exc, _ReturnedState):
        return exc.state
    if isinstance(exc, TaskTimeoutError):
        return State.failed(exc, name="TimedOut")
    if isinstance(exc, Exception):
        return State.failed(exc)
    return State.crashed(
        exc,
        f"Task run {run.name!r} was ended by {type(exc).__name__}"
        + (f": {exc}" if str(exc) else "")
        + ", a BaseException, before it could finish.",
    )


def _retry_delay(
    run: RunInfo, state: State, attempt: int, retry_crashed: bool = False
) -> float | None:
    """Seconds to wait before retrying, or None if the run must not be retried.

    `retry_crashed` also retries a CRASHED attempt (a runner whose worker died).
    """
    options = run.task.options
    if attempt > options.retries:
        return None
    if state.type is not StateType.FAILED and not (
        retry_crashed and state.type is StateType.CRASHED
    ):
        return None
    condition = options.retry_condition_fn
    if condition is not None:
        try:
            if not condition(run.task, run, state):
                return None
        except Exception:
            logger.exception("retry_condition_fn of task %r raised; not retrying", run.task.name)
            return None
    delay: float = options.delay_for(attempt)
    jitter = options.retry_jitter_factor
    if jitter and delay > 0:
        import random

        delay = max(0.0, delay * (1.0 + random.uniform(-jitter, jitter)))
    return delay


def _run_hooks(run: RunInfo, state: State) -> None:
    options = run.task.options
    hooks = options.on_completion if state.type is StateType.COMPLETED else options.on_failure
    for hook in hooks:
        try:
            hook(run.task, run, state)
        except Exception:
            logger.exception(
                "Hook %r of task run %r raised; the run's state stays %r",
                getattr(hook, "__name__", hook),
                run.name,
                state,
            )


def run_sync(
    run: RunInfo,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    on_state: StateCallback | None = None,
    *,
    first_attempt: int = 1,
    enforce_timeout: bool = True,
) -> State:
    """Run a synchronous task function to a final State. Never raises.

    `first_attempt` numbers the first attempt made here: a runner that retries a run
    itself (its worker died) continues the count. With `enforce_timeout=False` the
    function is called directly and the caller enforces `timeout_seconds` (a
    process runner kills the worker instead).
    """
    task = run.task
    fn = task.fn
    options = task.options
    timeout = options.timeout_seconds if enforce_timeout else None
    attempt = first_attempt - 1
    while True:
        attempt += 1
        try:
            if timeout is None:
                state = _adopt(fn(*args, **kwargs))
            else:
                state = _adopt(_call_with_timeout(fn, args, kwargs, timeout, run))
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt) and threading.current_thread() is _MAIN:
                # Ctrl-C reaching a task that runs in the main thread (sync runner, a
                # direct call) interrupts the flow; the caller records the crash.
                raise
            state = _final_state(exc, run)
            delay = _retry_delay(run, state, attempt)
            if delay is not None:
                if on_state is not None:
                    on_state(
                        State.pending("Retrying", f"Attempt {attempt + 1} after: {state.message}")
                    )
                if delay:
                    time.sleep(delay)
                if on_state is not None:
                    on_state(State.running())
                continue
        if options.on_completion or options.on_failure:
            _run_hooks(run, state)
        return state


async def run_async(
    run: RunInfo,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    on_state: StateCallback | None = None,
    *,
    first_attempt: int = 1,
    enforce_timeout: bool = True,
) -> State:
    """Run an async task function to a final State in the running event loop. Never raises.

    A timeout cancels the coroutine, so the work stops at its next `await`.
    `first_attempt` and `enforce_timeout` are as for `run_sync`.
    """
    import asyncio

    task = run.task
    options = task.options
    timeout = options.timeout_seconds if enforce_timeout else None
    attempt = first_attempt - 1
    while True:
        attempt += 1
        try:
            if timeout is None:
                value = await task.fn(*args, **kwargs)
            else:
                try:
                    value = await asyncio.wait_for(task.fn(*args, **kwargs), timeout)
                except asyncio.TimeoutError:
                    raise _timeout_error(run, timeout) from None
            state = _adopt(await _awaited(value))
        except asyncio.CancelledError as exc:
            state = State.cancelled(f"Task run {run.name!r} was cancelled while running.")
            if asyncio.current_task() is not None and _being_cancelled():
                raise exc
        except BaseException as exc:
            state = _final_state(exc, run)
            delay = _retry_delay(run, state, attempt)
            if delay is not None:
                if on_state is not None:
                    on_state(
                        State.pending("Retrying", f"Attempt {attempt + 1} after: {state.message}")
                    )
                if delay:
                    await asyncio.sleep(delay)
                if on_state is not None:
                    on_state(State.running())
                continue
        if options.on_completion or options.on_failure:
            _run_hooks(run, state)
        return state


def _being_cancelled() -> bool:
    import asyncio

    current = asyncio.current_task()
    cancelling = getattr(current, "cancelling", None)
    return bool(cancelling()) if cancelling is not None else False
