"""The tasks of the limits conformance tests, at module level so that any worker can
import them. Each timed run returns its own start and end on the machine's monotonic
clock (shared by every process of one machine): the tests count overlaps from those."""

from __future__ import annotations

import os
import time
from typing import Any

import baton
from baton import task
from baton.testing._rendezvous import Rendezvous
from baton.testing._tasks import _loose

__all__ = [
    "LIMIT_TAG",
    "busy_interval",
    "concurrency_block",
    "gated_interval",
    "held_interval",
    "limited_child",
    "limited_parent",
    "map_limited",
    "rate_limited_call",
    "signal_free",
    "unknown_limit",
]

LIMIT_TAG = "kit-limited"
"""The tag the limited tasks carry; the tests declare a limit for it."""

WORK_SECONDS = 0.3
"""How long each timed run works: long enough for runs to overlap, were they let to."""


def _interval(seconds: float) -> tuple[float, float]:
    start = time.monotonic()
    time.sleep(seconds)
    return start, time.monotonic()


@_loose
@task(tags=[LIMIT_TAG])
def busy_interval(index: int, seconds: float = WORK_SECONDS) -> tuple[float, float]:
    """Work `seconds`; return when this run started and ended."""
    return _interval(seconds)


@_loose
@task(tags=[LIMIT_TAG])
def gated_interval(rv: Rendezvous, index: int, gate: str) -> tuple[float, float]:
    """Wait for marker `gate`, then work a moment; return when this run started and ended."""
    start = time.monotonic()
    rv.wait(gate)
    time.sleep(0.05)
    return start, time.monotonic()


@_loose
@task(tags=[LIMIT_TAG])
def held_interval(rv: Rendezvous, waits_for: str) -> str:
    """Hold the limit's slot until marker `waits_for` is set by another run."""
    rv.wait(waits_for)
    return "held"


@_loose
@task
def signal_free(rv: Rendezvous, name: str) -> str:
    """An untagged run: set marker `name`."""
    rv.signal(name)
    return name


@_loose
@task(tags=[LIMIT_TAG])
def limited_child(value: int) -> int:
    return value + 1


@_loose
@task(tags=[LIMIT_TAG])
def limited_parent(value: int) -> int:
    """A tagged run that submits a tagged subtask and waits for it."""
    return limited_child.submit(value).result() * 10


@_loose
@task
def map_limited(count: int, seconds: float = WORK_SECONDS) -> list[tuple[float, float]]:
    """An untagged run that maps `count` tagged subtasks (on its worker) and waits."""
    return busy_interval.map(range(count), seconds).result()


@_loose
@task
def concurrency_block(name: str, index: int, seconds: float = WORK_SECONDS) -> Any:
    """Hold a slot of concurrency limit `name` for a block; when the block ran, and in
    which process."""
    with baton.concurrency(name):
        start, end = _interval(seconds)
    return start, end, os.getpid()


@_loose
@task
def rate_limited_call(name: str, index: int) -> float:
    """Wait for a call of rate limit `name`; when it was made."""
    baton.rate_limit(name)
    return time.monotonic()


@_loose
@task
def unknown_limit(name: str) -> None:
    """Use a concurrency limit that the flow does not declare."""
    with baton.concurrency(name):
        pass
