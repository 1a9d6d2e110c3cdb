"""The tasks of the reliability tests, in a module of their own so that worker processes
(the `process` runner's, Dask's, Ray's) import them by name."""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

from baton import task
from baton.testing._rendezvous import Rendezvous
from baton.testing._tasks import combine_values

DOOMED_SECONDS = 120.0
"""How long a doomed attempt waits to be killed: a safety net, never a verdict."""


class TransientError(Exception):
    """A failure that a retry of the same run gets past."""


@task
def inc(x: int) -> int:
    return x + 1


@task
def add(x: int, y: int) -> int:
    return x + y


@task
def total(values: list[int]) -> int:
    return sum(values)


@task
def work(rv: Rendezvous, index: int, doomed_attempts: int) -> int:
    """Return ``index * index``; but the first `doomed_attempts` attempts announce their
    process (marker ``doomed-<index>-<attempt>``) and block until the test kills it."""
    attempt = rv.record(f"attempt-{index}")
    if attempt <= doomed_attempts:
        rv.signal(f"doomed-{index}-{attempt}", str(os.getpid()))
        threading.Event().wait(DOOMED_SECONDS)
        raise TimeoutError(f"attempt {attempt} of run {index} was never killed")
    return index * index


@task
def ends_with(how: str, value: int) -> int:
    """Return `value`, or end the run with a BaseException that is not an Exception."""
    if how == "keyboard-interrupt":
        raise KeyboardInterrupt
    if how == "system-exit":
        raise SystemExit(3)
    return value


@task
def flaky_combine(
    rv: Rendezvous, tag: str, transient: int, op: str, const: int, inputs: Any
) -> int:
    """A node of a random task graph whose first `transient` attempts fail."""
    attempt = rv.record(f"attempt-{tag}")
    if attempt <= transient:
        raise TransientError(f"attempt {attempt} of {tag} failed on purpose")
    return combine_values(op, const, inputs)


def kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
