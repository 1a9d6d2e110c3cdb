"""One background event loop per process for async task runs started from sync code.

Many concurrent async runs share this loop instead of taking a thread each.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["get_loop", "on_portal_thread", "run_blocking"]

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None


def get_loop() -> asyncio.AbstractEventLoop:
    """The shared loop, started on first use in a daemon thread."""
    global _loop, _thread
    loop = _loop
    if loop is not None and _thread is not None and _thread.is_alive():
        return loop
    with _lock:
        if _loop is None or _thread is None or not _thread.is_alive():
            ready = threading.Event()
            new_loop = asyncio.new_event_loop()

            def serve() -> None:
                asyncio.set_event_loop(new_loop)
                new_loop.call_soon(ready.set)
                new_loop.run_forever()

            _thread = threading.Thread(target=serve, name="baton-event-loop", daemon=True)
            _thread.start()
            ready.wait()
            _loop = new_loop
        return _loop


def on_portal_thread() -> bool:
    """True when called from the shared loop's own thread."""
    return _thread is not None and threading.current_thread() is _thread


def submit(coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
    """Schedule `coro` on the shared loop; returns a concurrent future of its result."""
    return asyncio.run_coroutine_threadsafe(coro, get_loop())


def run_blocking(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` on the shared loop and block the calling thread until it returns."""
    if on_portal_thread():
        coro.close()
        raise RuntimeError(
            "An async task was run synchronously from inside the event loop that runs async "
            "tasks; await it instead."
        )
    return asyncio.run_coroutine_threadsafe(coro, get_loop()).result()


@atexit.register
def _stop() -> None:
    loop = _loop
    if loop is not None and loop.is_running():
        loop.call_soon_threadsafe(loop.stop)
