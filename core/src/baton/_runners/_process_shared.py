"""The warm pools of the `process` runner: worker processes kept between flow runs.

A `ProcessRunner` that a flow run starts for itself (selected by name, from
`get_runner`, or an unstarted instance given to ``@flow``) takes its workers from
the warm pool of its options, started by the first such runner and kept for the
next ones: a flow run then starts no process. One pool per distinct set of options
that shape the workers (the number of workers, the initializer and its arguments,
the idle timeout). A pool stops its workers once no runner has used it for its idle
timeout, and at the latest when the interpreter exits.
"""

from __future__ import annotations

import atexit
import os
import threading
from collections.abc import Hashable

from baton._runners._process_jobs import Session
from baton._runners._process_pool import WorkerPool
from baton._runners._process_shm import remove_leftovers

__all__ = ["give_back", "lease", "shutdown_all"]

_lock = threading.Lock()
_pools: dict[Hashable, WorkerPool] = {}


def lease(
    key: Hashable,
    max_workers: int,
    init_blob: bytes | None,
    idle_timeout: float | None,
    batch_size: int | None = None,
) -> tuple[WorkerPool, Session]:
    """The warm pool for `key` (started if there is none), and a session on it for a
    runner with `batch_size` (which does not shape the workers: runners that differ
    only in it share a pool)."""
    with _lock:
        pool = _pools.get(key)
        if pool is None or pool.retired:
            pool = WorkerPool(max_workers, init_blob, idle_timeout, _retire)
            _pools[key] = pool
        pool.leases += 1
        return pool, pool.open_session(warm=True, batch_size=batch_size)


def give_back(pool: WorkerPool, session: Session, wait: bool) -> None:
    """A runner is done with the pool: its runs end (or are stopped), the workers stay."""
    try:
        pool.close_session(session, wait)
    finally:
        with _lock:
            pool.leases -= 1
            idle = pool.leases == 0
        if idle:
            pool.became_idle()


def _retire(pool: WorkerPool) -> bool:
    """The pool's idle timeout passed: take it out of use, unless a runner took it
    meanwhile (called by its dispatcher, which then stops the workers)."""
    with _lock:
        if pool.leases or pool.retired:
            return False
        pool.retired = True
        for key, known in list(_pools.items()):
            if known is pool:
                del _pools[key]
        return True


def shutdown_all() -> None:
    """Stop every warm pool's workers (at interpreter exit): idle workers are asked to
    exit, and the workers of runs still going are killed."""
    with _lock:
        pools = list(_pools.values())
        _pools.clear()
        for pool in pools:
            pool.retired = True
    for pool in pools:
        try:
            pool.close(wait=not pool.leases and not pool.busy())
        except Exception:
            pass
    remove_leftovers()


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()
    _pools.clear()  # the pools themselves forget their workers (see _process_pool)


atexit.register(shutdown_all)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
