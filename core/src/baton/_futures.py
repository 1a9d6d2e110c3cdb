"""Futures: handles on task runs, owned by the core and completed by runners."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from queue import Empty, SimpleQueue
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, TypeVar, final

from baton._attempts import FINAL_STATE_TYPES
from baton._states import LazyResult, State, StateType

if TYPE_CHECKING:
    import asyncio

    from baton._taskrun import TaskRun

__all__ = [
    "DoneAndNotDone",
    "Future",
    "FutureList",
    "as_completed",
    "blocking_section",
    "wait",
]

R = TypeVar("R")
logger = logging.getLogger("baton")

_PENDING = StateType.PENDING
_RUNNING = StateType.RUNNING
_COMPLETED = StateType.COMPLETED
_FINAL_TYPES = FINAL_STATE_TYPES
_FAILED_TYPES = FINAL_STATE_TYPES - {StateType.COMPLETED}

# A worker thread of a bounded pool registers itself here while it runs a task, so
# that a task which blocks on other futures gives its slot up for as long as it
# waits: nested submission never deadlocks a full pool.
_worker = threading.local()


@contextlib.contextmanager
def blocking_section() -> Iterator[None]:
    """Mark a stretch of code that blocks waiting for other task runs.

    Inside a worker of a bounded pool, the worker's slot is lent to another run until
    the block ends, so that the runs waited for can use it. Baton's own waits
    (`Future.result`, `wait`, `as_completed`) do this already; use it around other
    code of a task that blocks on runs. A runner with a pool of its own takes part
    by running its workers' calls inside `lend_slot` (see `SlotLender`); elsewhere
    the block does nothing.
    """
    pool = getattr(_worker, "pool", None)
    if pool is None:
        yield
        return
    pool.secede()
    try:
        yield
    finally:
        pool.rejoin()


def _wait_until(
    ready: Callable[[], bool], timeout: float | None, block: Callable[[float | None], object]
) -> None:
    """`block(timeout)` inside a `blocking_section`; or, in a worker whose pool has its
    own `wait`, that `wait` until `ready()` (then `block` is not called)."""
    pool_wait = getattr(getattr(_worker, "pool", None), "wait", None)
    if pool_wait is not None:
        pool_wait(ready, timeout)
        return
    with blocking_section():
        block(timeout)


# The futures' locks: 256 shared by all, a future taking the one of its run id. Each is
# held for a few attribute stores only, never with another: a lock of its own per
# future was one more object per run for the garbage collector to walk (with it, a
# flow run of 10,000 runs on `sync` cost about a tenth more per run).
_LOCKS = tuple(threading.Lock() for _ in range(256))


def _new_locks_after_fork() -> None:
    # Another thread may have held one as the process forked: new futures here must
    # not wait for it.
    global _LOCKS
    _LOCKS = tuple(threading.Lock() for _ in range(256))


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_locks_after_fork)


@final
class Future(Generic[R]):
    """A handle on a task run: its state now, and its result once it is final.

    Returned by `Task.submit` and (in a `FutureList`) by `Task.map`. Pass it to
    another task to make that task wait for this one and receive its result.
    """

    __slots__ = (
        "__weakref__",
        "_callbacks",
        "_lock",
        "_observed",
        "_run",
        "_sent",
        "_state",
        "_waiters",
    )

    def __init__(self, run: TaskRun) -> None:
        self._run = run
        self._state = State(_PENDING)
        self._lock = _LOCKS[run.id & 255]
        self._waiters: list[threading.Event] | None = None
        self._callbacks: list[Callable[[Future[R]], None]] | None = None
        self._observed = False
        # Set while the run is on its way to a worker from where `cancel` cannot take
        # it back (see `TaskRun.mark_sent`): cancel() then leaves it to run.
        self._sent = False

    # -- read ---------------------------------------------------------------------

    @property
    def task_run_id(self) -> int:
        """The id of the task run, unique within this process."""
        return self._run.id

    @property
    def task_run(self) -> TaskRun:
        """The task run this future follows (name, task, parameters)."""
        return self._run

    @property
    def name(self) -> str:
        """The task run's name."""
        return self._run.name

    @property
    def state(self) -> State:
        """The run's current State. Reading a final failed state counts as handling it."""
        state = self._state
        if state.type in _FAILED_TYPES:
            self._mark_observed()
        return state

    def done(self) -> bool:
        """True once the run is in a final state."""
        return self._state.type in _FINAL_TYPES

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the run is final or `timeout` seconds pass. Returns `done()`.

        Waiting for a run counts as handling its failure, as reading `state` does.
        """
        if self._state.type not in _FINAL_TYPES and not self._block(timeout):
            return False
        self._mark_observed()
        return True

    def _block(self, timeout: float | None) -> bool:
        with self._lock:
            if self._state.type in _FINAL_TYPES:
                return True
            event = threading.Event()
            if self._waiters is None:
                self._waiters = [event]
            else:
                self._waiters.append(event)
        _check_may_block(self, timeout)
        _wait_until(event.is_set, timeout, event.wait)
        return event.is_set()

    def result(self, timeout: float | None = None, raise_on_failure: bool = True) -> R:
        """The run's return value, waiting for it if need be.

        If the run failed, its exception is raised (or returned, with
        `raise_on_failure=False`). If `timeout` seconds pass first, `TimeoutError`
        is raised and the run carries on.
        """
        if self._state.type not in _FINAL_TYPES and not self._block(timeout):
            raise TimeoutError(
                f"Task run {self._run.name!r} did not finish within {timeout:g} s; "
                f"it is still {self._state.type.value}."
            )
        state = self._state
        if state.type is _COMPLETED:
            data = state._data
            return data if type(data) is not LazyResult else data.get()  # type: ignore[no-any-return]
        self._mark_observed()
        return state.result(raise_on_failure)  # type: ignore[no-any-return]

    def add_done_callback(self, fn: Callable[[Future[R]], None]) -> None:
        """Call `fn(future)` once the run is final (at once, if it already is).

        It is called in the thread that made the run final (on some runners the one
        thread that reports every run's end), so it must not wait for another run:
        there, `.result()`, `.wait()`, `wait()` or `as_completed()` on a future that is
        not final raise `RuntimeError` instead of waiting (for ever, on such a runner).
        """
        self._on_done(_DoneCallback(fn))

    def _on_done(self, fn: Callable[[Future[R]], None]) -> None:
        """`add_done_callback` for the core's own callbacks, which may wait (a run that
        the `sync` runner executes in the callback that dispatches it)."""
        with self._lock:
            if self._state.type not in _FINAL_TYPES:
                if self._callbacks is None:
                    self._callbacks = [fn]
                else:
                    self._callbacks.append(fn)
                return
        _call_back(fn, self)

    def cancel(self) -> bool:
        """Cancel the run if it has not started. Returns True if it is now cancelled:
        then it never runs. False if it is final, running, or sent where it may start
        before a cancellation could reach it (a batch on a worker): it runs to its end."""
        if not self._set_final(
            State.cancelled(f"Task run {self._run.name!r} was cancelled before it started."),
            only_if_pending=True,
        ):
            return self._state.type is StateType.CANCELLED
        # Whoever cancels a run has dealt with it: it must not fail the flow as unhandled.
        self._mark_observed()
        self._run.scope.runner_cancel(self._run)
        return True

    def __await__(self) -> Generator[Any, None, R]:
        if self._state.type not in _FINAL_TYPES:
            import asyncio

            loop = asyncio.get_running_loop()
            waiter: asyncio.Future[None] = loop.create_future()

            def wake(_: Future[R]) -> None:
                loop.call_soon_threadsafe(_resolve_waiter, waiter)

            self._on_done(wake)
            yield from waiter.__await__()
        return self.result()

    def __repr__(self) -> str:
        return f"<Future {self._run.name!r} {self._state!r}>"

    # -- internal: driven by the core and the runners ----------------------------

    def _mark_observed(self) -> None:
        if not self._observed and self._state.type in _FINAL_TYPES:
            self._observed = True
            if self._state.type in _FAILED_TYPES:
                self._run.scope.failure_observed(self)

    def _set_running(self, timestamp: float | None = None) -> bool:
        """PENDING -> RUNNING. False if the run was cancelled (or already final)."""
        with self._lock:
            if self._state.type is not _PENDING:
                return False
            self._state = State(_RUNNING, timestamp=timestamp)
        return True

    def _set_interim(self, state: State) -> None:
        """Record a non-final state reported while the run goes on (Retrying, Running)."""
        with self._lock:
            if self._state.type in _FINAL_TYPES:
                return
            self._state = state
            if state.type is _PENDING:
                self._sent = False  # waits for its next attempt where it can be cancelled

    def _mark_sent(self) -> bool:
        """Mark a PENDING run sent (see `TaskRun.mark_sent`). False if it is final."""
        with self._lock:
            current = self._state.type
            if current in _FINAL_TYPES:
                return False
            if current is _PENDING:
                self._sent = True
        return True

    def _set_final(self, state: State, only_if_pending: bool = False) -> bool:
        """Make `state` the run's final state. The first final state wins."""
        scope = self._run.scope
        observe = scope.observe
        observed_first = False
        if observe is not None and not only_if_pending and self._state.type not in _FINAL_TYPES:
            # Observers hear of the final state before anyone can see it, so whatever a
            # downstream run does next is reported after this run's end, never before.
            try:
                observe(self._run, state)
            except Exception:
                observer_raised(self._run)
            observed_first = True
        with self._lock:
            current = self._state.type
            if current in _FINAL_TYPES or (
                only_if_pending and (current is not _PENDING or self._sent)
            ):
                return False
            self._state = state
            waiters, self._waiters = self._waiters, None
            callbacks, self._callbacks = self._callbacks, None
        if waiters:
            for event in waiters:
                event.set()
        scope.run_finished(self, state, observe=not observed_first)
        if callbacks:
            for fn in callbacks:
                _call_back(fn, self)
        return True


def observer_raised(task_run: TaskRun) -> None:
    """Log that the flow run's observer raised on a state of `task_run`: it changes
    nothing for the run. (The observer is called bare, without a wrapper frame of its
    own, where it is one plain hook: see `make_observer`.)"""
    logger.exception("A task_run_state_changed hook raised for %r", task_run)


def _resolve_waiter(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _call_back(fn: Callable[[Future[Any]], None], future: Future[Any]) -> None:
    """Call a done callback with the run's scope current, so that what it submits goes
    to the runner of the run's flow. Whatever it raises, a BaseException included, is
    logged and changes nothing: the run is final, and the thread that made it final (a
    runner's worker or dispatcher) must go on."""
    scope = future._run.scope
    token = scope.enter()
    try:
        fn(future)
    except BaseException:
        logger.exception("Done callback %r of %r raised; it changes nothing", fn, future)
    finally:
        scope.exit(token)


@final
class _DoneCallback:
    """A done callback added through the public `add_done_callback`: while it runs, its
    thread may not wait for a run (see `_check_may_block`)."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[Future[Any]], None]) -> None:
        self.fn = fn

    def __call__(self, future: Future[Any]) -> None:
        outer = getattr(_in_callback, "fn", None)
        _in_callback.fn = self.fn
        try:
            self.fn(future)
        finally:
            _in_callback.fn = outer

    def __repr__(self) -> str:
        return repr(self.fn)


_in_callback = threading.local()


def _check_may_block(future: Future[Any], timeout: float | None = None) -> None:
    """Refuse to block where waiting would stall what reports runs' ends: a done
    callback, or the event loop of async tasks. A `timeout` of 0 only looks: allowed."""
    if timeout is not None and timeout <= 0:
        return
    callback = getattr(_in_callback, "fn", None)
    if callback is not None:
        raise RuntimeError(
            f"Done callback {callback!r} waits for {future!r}, which is not final. A done "
            "callback runs in the thread that reports runs as they end (on the process "
            "runner, the one thread that reports every run), so it must not wait for "
            "another run. Read that result in the flow, or pass the future to a task."
        )
    from baton._portal import on_portal_thread

    if on_portal_thread():
        raise RuntimeError(
            f"Blocking on {future!r} from an async task would stall the event loop that "
            "runs it. Use `await future` (or `await asyncio.gather(...)`) in async code."
        )


class FutureList(list[Future[R]]):
    """The futures of a `.map`, in the order of its inputs."""

    def result(self, timeout: float | None = None, raise_on_failure: bool = True) -> list[R]:
        """Every run's result, in order; raises the first failure met, unless told not to."""
        deadline = None if timeout is None else time.monotonic() + timeout
        results: list[R] = []
        for future in self:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            results.append(future.result(remaining, raise_on_failure))
        return results

    def wait(self, timeout: float | None = None) -> DoneAndNotDone:
        """Wait for every run; see `baton.wait`."""
        return wait(self, timeout)

    @property
    def states(self) -> list[State]:
        """Every run's current state, in order."""
        return [future.state for future in self]


class DoneAndNotDone(NamedTuple):
    """What `wait` returns: the futures that are final, and those that are not."""

    done: set[Future[Any]]
    not_done: set[Future[Any]]


def _futures_in(futures: object, caller: str) -> list[Future[Any]]:
    """The futures `futures` holds, or a `TypeError` that says what was passed instead."""
    if isinstance(futures, Future):
        raise TypeError(
            f"{caller}() takes an iterable of futures, and got the single future "
            f"{futures!r}: pass [future], or call its .wait() or .result()."
        )
    if not isinstance(futures, Iterable):
        raise TypeError(
            f"{caller}() takes an iterable of futures (from .submit() or .map()), and got "
            f"{type(futures).__name__} {futures!r:.80}."
        )
    items: list[Future[Any]] = list(futures)
    for index, item in enumerate(items):
        if not isinstance(item, Future):
            raise TypeError(
                f"{caller}() takes futures (from .submit() or .map()), and item {index} is "
                f"{type(item).__name__} {item!r:.80}."
            )
    return items


def wait(futures: Iterable[Future[Any]], timeout: float | None = None) -> DoneAndNotDone:
    """Wait until every future is final, or `timeout` seconds pass.

    Returns `(done, not_done)`. Futures that ended in failure are in `done`; read
    their `.state` to tell them apart. Waiting counts as handling their failures.

    >>> from baton import task, wait
    >>> @task
    ... def double(x):
    ...     return 2 * x
    >>> done, not_done = wait(double.map([1, 2, 3]))
    >>> sorted(f.result() for f in done), not_done
    ([2, 4, 6], set())
    """
    items = _futures_in(futures, "wait")
    pending = [f for f in items if f._state.type not in _FINAL_TYPES]
    if pending:
        event = threading.Event()
        count = [len(pending)]
        lock = threading.Lock()

        def one_done(_: Future[Any]) -> None:
            with lock:
                count[0] -= 1
                if count[0] == 0:
                    event.set()

        for future in pending:
            future._on_done(one_done)
        if not event.is_set():
            _check_may_block(pending[0], timeout)
            _wait_until(event.is_set, timeout, event.wait)
    done: set[Future[Any]] = set()
    not_done: set[Future[Any]] = set()
    for future in items:
        if future._state.type in _FINAL_TYPES:
            future._mark_observed()
            done.add(future)
        else:
            not_done.add(future)
    return DoneAndNotDone(done, not_done)


def as_completed(futures: Iterable[Future[R]], timeout: float | None = None) -> Iterator[Future[R]]:
    """Yield futures as their runs become final, in completion order.

    Raises `TimeoutError` if `timeout` seconds pass before all are final.
    """
    items = list(dict.fromkeys(_futures_in(futures, "as_completed")))
    finished: SimpleQueue[Future[R]] = SimpleQueue()
    for future in items:
        future._on_done(finished.put)
    deadline = None if timeout is None else time.monotonic() + timeout
    for left in range(len(items), 0, -1):
        try:
            future = finished.get_nowait()
        except Empty:
            future = _next_finished(finished, deadline, left, len(items), items[0])
        future._mark_observed()
        yield future


def _next_finished(
    finished: SimpleQueue[Future[R]],
    deadline: float | None,
    left: int,
    total: int,
    sample: Future[Any],
) -> Future[R]:
    remaining = None if deadline is None else deadline - time.monotonic()
    if remaining is None or remaining > 0:
        _check_may_block(sample)
        taken: list[Future[R]] = []

        def take(timeout: float | None) -> None:
            with contextlib.suppress(Empty):
                taken.append(finished.get(timeout=timeout))

        _wait_until(lambda: not finished.empty(), remaining, take)
        if taken:
            return taken[0]
        with contextlib.suppress(Empty):
            return finished.get_nowait()
    raise TimeoutError(f"{left} of {total} futures still unfinished after the timeout.")
