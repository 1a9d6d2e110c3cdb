"""Ctrl-C that Python swallowed, delivered again.

A KeyboardInterrupt raised by the SIGINT handler while the main thread happens to be
inside a garbage-collector callback or a ``__del__`` method is not raised at all:
CPython reports it as "Exception ignored in ..." and carries on. Libraries install such
callbacks (Dask's scheduler and workers time every full collection), so under load a
Ctrl-C could be lost and the flow run on to its end. While a flow runs in the main
thread, such a swallowed interrupt sends SIGINT to this process again, so that it is
raised where the flow can see it.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["redeliver_swallowed_interrupts"]

_REDELIVER_AFTER = 0.05  # seconds: out of the callback that swallowed the first one
_active = threading.local()


@contextmanager
def redeliver_swallowed_interrupts() -> Iterator[None]:
    """For the outermost flow run in the main thread: see the module's docstring."""
    main = threading.main_thread()
    if threading.current_thread() is not main or getattr(_active, "on", False):
        yield
        return
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        exc_type = unraisable.exc_type
        if (
            isinstance(exc_type, type)
            and issubclass(exc_type, KeyboardInterrupt)
            and threading.current_thread() is main
        ):
            # Raising here would be swallowed too: signal again from outside.
            timer = threading.Timer(_REDELIVER_AFTER, os.kill, (os.getpid(), signal.SIGINT))
            timer.daemon = True
            timer.start()
        previous(unraisable)

    sys.unraisablehook = hook
    _active.on = True
    try:
        yield
    finally:
        _active.on = False
        if sys.unraisablehook is hook:
            sys.unraisablehook = previous
