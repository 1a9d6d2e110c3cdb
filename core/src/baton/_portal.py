"""One event loop per process for async task runs started from sync code: an anyio
blocking portal, whose loop runs in a daemon thread.

Many concurrent async runs share this loop instead of taking a thread each.
"""

from __future__ import annotations

import atexit
import threading
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import concurrent.futures
    from contextlib import AbstractContextManager

    from anyio.from_thread import BlockingPortal

__all__ = ["get_portal", "on_portal_thread", "run_blocking", "submit"]

T = TypeVar("T")

_lock = threading.Lock()
_portal: BlockingPortal | None = None
_context: AbstractContextManager[BlockingPortal] | None = None
_thread: threading.Thread | None = None


def get_portal() -> BlockingPortal:
    """The shared portal, started on first use."""
    portal = _portal
    if portal is not None and _thread is not None and _thread.is_alive():
        return portal
    global _context
    with _lock:
        if _portal is None or _thread is None or not _thread.is_alive():
            from anyio.from_thread import start_blocking_portal

            _context = start_blocking_portal(backend="asyncio")
            _set(_context.__enter__())
        assert _portal is not None
        return _portal


def _set(portal: BlockingPortal) -> None:
    global _portal, _thread
    _thread = portal.call(threading.current_thread)
    _thread.name = "baton-event-loop"
    _portal = portal


def on_portal_thread() -> bool:
    """True when called from the shared loop's own thread."""
    return _thread is not None and threading.current_thread() is _thread


def submit(coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
    """Schedule `coro` on the shared loop; returns a concurrent future of its result."""
    if on_portal_thread():
        # An async run submitting another: the portal takes work from other threads only.
        import asyncio

        return asyncio.run_coroutine_threadsafe(coro, asyncio.get_running_loop())
    return get_portal().start_task_soon(_awaiting, coro)


async def _awaiting(coro: Coroutine[Any, Any, T]) -> T:
    return await coro


def run_blocking(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` on the shared loop and block the calling thread until it returns."""
    if on_portal_thread():
        coro.close()
        raise RuntimeError(
            "An async task was run synchronously from inside the event loop that runs async "
            "tasks; await it instead."
        )
    result: T = get_portal().call(_awaiting, coro)
    return result


@atexit.register
def _stop() -> None:
    context, portal = _context, _portal
    if context is None or portal is None or _thread is None or not _thread.is_alive():
        return
    try:
        # Runs still on the loop at exit are cancelled, as they were by stopping the loop.
        portal.call(portal.stop, True)
        context.__exit__(None, None, None)
    except Exception:
        pass
