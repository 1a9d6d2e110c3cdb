"""Loaded by the worker processes of a cluster the runner starts (a Dask worker preload),
and what the flow's process does likewise: leave Ctrl-C to Baton, quietly.

Ctrl-C in a terminal signals the whole process group, the workers of a local cluster
included. The flow's process decides what an interrupt means: it cancels the runs
and stops the cluster, which stops the workers, and says so in one line. A worker
that took SIGINT itself would die at once, printing tracebacks, and Dask would log
the tasks lost with it; so the workers ignore SIGINT, and once one has come, Dask's
logs of the shutdown that follows are silenced.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["dask_setup", "quiet_distributed"]


def dask_setup(worker: Any) -> None:
    """In a worker process (not a worker thread of the flow's process): a SIGINT no
    longer ends the worker; it silences Dask's logs, as the cluster is stopped next."""
    if threading.current_thread() is not threading.main_thread():
        return
    import multiprocessing

    if multiprocessing.parent_process() is None:
        return

    def interrupted(signum: int, frame: Any) -> None:
        _silence()

    signal.signal(signal.SIGINT, interrupted)


def _dask_loggers() -> list[logging.Logger]:
    names = [n for n in list(logging.root.manager.loggerDict) if n.startswith("distributed")]
    return [logging.getLogger(n) for n in ["distributed", *names]]


def _silence() -> list[tuple[logging.Logger, bool]]:
    changed = []
    for logger in _dask_loggers():
        changed.append((logger, logger.disabled))
        logger.disabled = True
    return changed


@contextlib.contextmanager
def quiet_distributed() -> Iterator[None]:
    """Dask's loggers say nothing within this block (the shutdown after a Ctrl-C)."""
    changed = _silence()
    try:
        yield
    finally:
        for logger, disabled in changed:
            logger.disabled = disabled
