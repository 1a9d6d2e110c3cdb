"""Waits for runs in a thread whose worker pool has its own `wait` (as the main thread of
a Ray worker has) go through that `wait`, and end when the runs do. No Ray here: the
pool is a stand-in that records what it is asked to wait for."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from baton import as_completed, flow, task, wait
from baton._futures import _worker


class RecordingPool:
    """Waits by polling `ready`, and records each wait, as a Ray worker's pool waits
    inside ``ray.wait``."""

    def __init__(self) -> None:
        self.waits = 0

    def secede(self) -> None:
        raise AssertionError("a pool with its own wait is not asked to secede")

    def rejoin(self) -> None:
        raise AssertionError("a pool with its own wait is not asked to rejoin")

    def wait(self, ready: Callable[[], bool], timeout: float | None) -> bool:
        self.waits += 1
        deadline = None if timeout is None else time.monotonic() + timeout
        while not ready():
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(0.001)
        return True


@pytest.fixture
def pool() -> Iterator[RecordingPool]:
    recording = RecordingPool()
    _worker.pool = recording
    try:
        yield recording
    finally:
        del _worker.pool


release = threading.Event()


@task
def gated(x: int) -> int:
    release.wait(10)
    return x


def _released_soon() -> None:
    threading.Timer(0.05, release.set).start()


@pytest.mark.parametrize("how", ["result", "wait", "as_completed", "timeout"])
def test_waits_for_runs_go_through_the_pools_wait(pool: RecordingPool, how: str) -> None:
    release.clear()

    @flow(task_runner="thread")
    def waiting() -> Any:
        futures = gated.map([1, 2])
        if how == "timeout":
            with pytest.raises(TimeoutError):
                futures[0].result(timeout=0.01)
            release.set()
            return futures.result()
        _released_soon()
        if how == "result":
            return futures.result()
        if how == "wait":
            done, not_done = wait(futures)
            return sorted(f.result() for f in done), not_done
        return sorted(f.result() for f in as_completed(futures))

    result = waiting()
    assert pool.waits >= 1
    assert result in ([1, 2], ([1, 2], set()))
