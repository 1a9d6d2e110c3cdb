"""Timeouts of async runs whose coroutine blocks its event loop.

`asyncio.wait_for` ends a coroutine at its deadline only if the event loop gets to run
its timer: a coroutine that blocks the loop (``time.sleep``, a blocking socket read, a
long computation without an ``await``) keeps the timer from firing until it returns,
and stalls every other coroutine on that loop meanwhile. On the loop that runs the
async tasks of a process, one such task would hold up all the others.

`watching(seconds, on_overrun, name)` guards a stretch of a coroutine: if it is still
running `seconds` after it began, and the loop it runs on does not answer then, the
loop is blocked; `on_overrun()` is called (from the watchdog's thread, while the loop
is still blocked) so that the run can end on time, and a warning names the task that
blocked the loop. When the loop answers, `asyncio.wait_for` ends the run itself and
the watchdog does nothing.

One daemon thread watches every loop in the process; a watch costs a lock, a heap
push and a wake-up of that thread only when its deadline is the earliest one.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, final

__all__ = ["Watch", "watch", "watching"]

logger = logging.getLogger("baton")

# After a deadline, how long the loop's own timer gets to end the run before the
# watchdog looks, and how long the loop then gets to answer before it counts as blocked.
GRACE_SECONDS = 0.05
ANSWER_SECONDS = 0.1

_ADVICE = (
    "Do not block the event loop in an async task: use `await asyncio.sleep(...)` "
    "rather than `time.sleep(...)`, run blocking calls in a thread with `await "
    "anyio.to_thread.run_sync(...)` (or `asyncio.to_thread`), or make it a sync task."
)


@final
class Watch:
    """One guarded stretch of a coroutine; `cancel()` it when the stretch ends."""

    __slots__ = (
        "_done",
        "coro",
        "deadline",
        "loop",
        "name",
        "on_overrun",
        "overran",
        "seconds",
        "settled",
        "task",
        "thread",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        task: asyncio.Task[object] | None,
        seconds: float,
        on_overrun: Callable[[], None],
        name: str,
        coro: Coroutine[Any, Any, Any] | None = None,
    ) -> None:
        self.loop = loop
        self.thread = threading.get_ident()  # the loop's: a watch starts on it
        self.task = task
        self.coro = coro
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds
        self.on_overrun = on_overrun
        self.name = name
        self._done = False
        # True once `on_overrun` was called: the run ended at its deadline, and what
        # its coroutine returns or raises later is to be dropped.
        self.overran = False
        # Set once the watchdog is done with this watch: cancelled, found the loop
        # answering after the deadline, or called `on_overrun`.
        self.settled = threading.Event()

    @property
    def active(self) -> bool:
        return not self._done

    def cancel(self) -> None:
        """The stretch ended: the watchdog forgets it (it is dropped lazily)."""
        self._done = True
        self.settled.set()

    def _finish(self) -> bool:
        """Take the watch over for a decision; False if it was cancelled meanwhile."""
        if self._done:
            return False
        self._done = True
        return True


class _Watchdog:
    """The thread that watches the deadlines of every `Watch` in the process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._heap: list[tuple[float, int, Watch]] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None

    def add(self, watch: Watch) -> None:
        with self._lock:
            first = not self._heap or watch.deadline < self._heap[0][0]
            heapq.heappush(self._heap, (watch.deadline, next(self._order), watch))
            thread = self._thread
            if thread is None or not thread.is_alive():
                thread = threading.Thread(target=self._serve, name="baton-watchdog", daemon=True)
                self._thread = thread
                thread.start()
            elif first:
                self._wake.notify()

    def active_on(self, loop: asyncio.AbstractEventLoop) -> list[Watch]:
        """The watches not yet due whose coroutine runs on `loop`."""
        with self._lock:
            return [w for _, _, w in self._heap if w.loop is loop and w.active]

    def _serve(self) -> None:
        while True:
            due = self._next_due()
            by_loop: dict[asyncio.AbstractEventLoop, list[Watch]] = {}
            for watch in due:
                by_loop.setdefault(watch.loop, []).append(watch)
            for loop, watches in by_loop.items():
                try:
                    self._check(loop, watches)
                except Exception:  # the watchdog must go on watching the others
                    logger.exception("The event loop watchdog failed to check %r", loop)
                    for watch in watches:
                        watch.settled.set()

    def _next_due(self) -> list[Watch]:
        """Wait until some watches are past their deadline and grace; return them."""
        with self._lock:
            while True:
                heap = self._heap
                while heap and not heap[0][2].active:
                    heapq.heappop(heap)
                if not heap:
                    self._wake.wait()
                    continue
                now = time.monotonic()
                wait = heap[0][0] + GRACE_SECONDS - now
                if wait > 0:
                    self._wake.wait(min(wait, threading.TIMEOUT_MAX))
                    continue
                due: list[Watch] = []
                while heap and heap[0][0] + GRACE_SECONDS <= now:
                    watch = heapq.heappop(heap)[2]
                    if watch.active:
                        due.append(watch)
                if due:
                    return due

    def _check(self, loop: asyncio.AbstractEventLoop, watches: list[Watch]) -> None:
        if loop.is_closed() or not loop.is_running():
            for watch in watches:
                watch.settled.set()
            return
        answered = threading.Event()
        try:
            loop.call_soon_threadsafe(answered.set)
        except RuntimeError:  # closed meanwhile
            answered.set()
        if answered.wait(ANSWER_SECONDS):
            # The loop runs: its own timers end these runs (asyncio.wait_for).
            for watch in watches:
                watch.settled.set()
            return
        blocker = _blocking_task(loop, watches)
        for watch in watches:
            if not watch._finish():
                continue
            if blocker is watch:
                logger.warning(
                    "Async task run %r blocked the event loop past its timeout of %g s; it "
                    "ended TimedOut, but its coroutine holds the loop until it returns, and "
                    "other async runs on that loop wait meanwhile. %s",
                    watch.name,
                    watch.seconds,
                    _ADVICE,
                )
            else:
                logger.warning(
                    "Async task run %r could not run past its timeout of %g s: %s blocks "
                    "the event loop. The run ended TimedOut. %s",
                    watch.name,
                    watch.seconds,
                    f"async task run {blocker.name!r}" if isinstance(blocker, Watch) else blocker,
                    _ADVICE,
                )
            watch.overran = True
            try:
                watch.on_overrun()
            except Exception:
                logger.exception(
                    "Ending async task run %r after it overran its timeout failed", watch.name
                )
            finally:
                watch.settled.set()


def _blocking_task(loop: asyncio.AbstractEventLoop, watches: list[Watch]) -> Watch | str:
    """What holds the loop: a watch of the run it runs, or a description of the task."""
    # Read from another thread: the task whose step the loop is executing right now.
    current = asyncio.current_task(loop)
    if current is None:
        return "a callback (not a task)"
    coro = current.get_coro()
    for watch in [*watches, *_watchdog.active_on(loop)]:
        if watch.task is current or (watch.coro is not None and watch.coro is coro):
            return watch
    label = _running_coroutine(watches) or getattr(coro, "__qualname__", None) or repr(coro)
    return f"task {current.get_name()!r} (running {label})"


def _running_coroutine(watches: list[Watch]) -> str | None:
    """The qualified name of the innermost coroutine function executing on the loop's
    thread: a task's own coroutine may be a wrapper (the portal's) around it."""
    import inspect
    import sys

    thread = watches[0].thread if watches else None
    frame = sys._current_frames().get(thread) if thread is not None else None
    while frame is not None:
        if frame.f_code.co_flags & inspect.CO_COROUTINE:
            return getattr(frame.f_code, "co_qualname", frame.f_code.co_name)
        frame = frame.f_back
    return None


_watchdog = _Watchdog()


def watch(
    seconds: float,
    on_overrun: Callable[[], None],
    name: str,
    coro: Coroutine[Any, Any, Any] | None = None,
) -> Watch:
    """Guard the running coroutine for `seconds`: see the module's docstring.

    Call it from the coroutine (on its loop's thread); `cancel()` the returned watch
    when the guarded stretch ends, however it ends. `coro` is the coroutine doing the
    guarded work when it runs in a task of its own (before Python 3.12,
    `asyncio.wait_for` wraps it in one), so that the warning names `name` when that
    task is the one blocking the loop.
    """
    loop = asyncio.get_running_loop()
    guard = Watch(loop, asyncio.current_task(loop), seconds, on_overrun, name, coro)
    _watchdog.add(guard)
    return guard


@contextmanager
def watching(
    seconds: float,
    on_overrun: Callable[[], None],
    name: str,
    coro: Coroutine[Any, Any, Any] | None = None,
) -> Iterator[Watch]:
    """`watch` for the block's duration."""
    guard = watch(seconds, on_overrun, name, coro)
    try:
        yield guard
    finally:
        guard.cancel()
