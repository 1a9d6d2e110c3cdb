"""Hard timeouts for runners that enforce them: one timer thread for every deadline."""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable, Hashable
from typing import final

__all__ = ["Deadlines"]


@final
class Deadlines:
    """Calls back when an attempt outlives its timeout, from one timer thread.

    A runner that stops work itself (it kills the worker process) starts a deadline
    as an attempt starts (when the worker reports RUNNING) and cancels it when the
    attempt ends; `expire` is called if the deadline passes first. It should kill
    the work and end the attempt with `timed_out(...)` through the attempt policy.
    A callback that raises is logged. `name` is the timer thread's, started with the
    first deadline.

    >>> import threading
    >>> deadlines = Deadlines()
    >>> fired = threading.Event()
    >>> deadlines.start("run-1", 0.01, fired.set)
    >>> fired.wait(5)
    True
    >>> deadlines.close()
    """

    __slots__ = ("_closed", "_entries", "_heap", "_lock", "_name", "_sequence", "_thread", "_wake")

    def __init__(self, name: str = "baton-deadlines") -> None:
        self._name = name
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._heap: list[tuple[float, int, Hashable]] = []
        self._entries: dict[Hashable, tuple[int, Callable[[], object]]] = {}
        self._sequence = itertools.count()
        self._thread: threading.Thread | None = None
        self._closed = False

    def start(self, key: Hashable, seconds: float, expire: Callable[[], object]) -> None:
        """Call `expire()` in `seconds` unless `cancel(key)` comes first (a key started
        again replaces its earlier deadline)."""
        with self._lock:
            if self._closed:
                return
            number = next(self._sequence)
            self._entries[key] = (number, expire)
            heapq.heappush(self._heap, (time.monotonic() + seconds, number, key))
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name=self._name, daemon=True)
                self._thread.start()
            self._wake.notify()

    def cancel(self, key: Hashable) -> bool:
        """Drop the deadline of `key`; False if it had none (or it already fired)."""
        with self._lock:
            return self._entries.pop(key, None) is not None

    def close(self) -> None:
        """Drop every deadline and stop the timer thread."""
        with self._lock:
            self._closed = True
            self._entries.clear()
            self._heap.clear()
            self._wake.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _serve(self) -> None:
        import logging

        while True:
            with self._lock:
                while True:
                    if self._closed:
                        return
                    heap = self._heap
                    while heap and self._entries.get(heap[0][2], (None,))[0] != heap[0][1]:
                        heapq.heappop(heap)  # cancelled or replaced
                    if not heap:
                        self._wake.wait()
                        continue
                    wait = heap[0][0] - time.monotonic()
                    if wait <= 0:
                        _, _, key = heapq.heappop(heap)
                        _, expire = self._entries.pop(key)
                        break
                    self._wake.wait(min(wait, threading.TIMEOUT_MAX))
            try:
                expire()
            except Exception:
                logging.getLogger("baton").exception("A deadline's callback raised")
