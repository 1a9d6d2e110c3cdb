"""The tasks the conformance tests run, at module level so that any worker can import them.

A runner that executes tasks in other processes or on other machines receives
these by reference (module and name) and imports this module there; it imports
nothing heavier than `baton`.
"""

from __future__ import annotations

import asyncio
import os
import re
import threading
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar, cast

from pydantic import BaseModel
from typing_extensions import ParamSpec

from baton import Future, State, Task, task, wait
from baton.testing._rendezvous import Rendezvous, RendezvousAborted

__all__ = [
    "KitAbort",
    "KitError",
    "Pair",
    "Payload",
    "RefusesToLoad",
    "Tracer",
    "UnpicklableError",
    "abort",
    "add",
    "add_all",
    "analyze_texts",
    "async_add",
    "async_blocks_loop",
    "async_fail",
    "async_flaky",
    "async_meet",
    "async_stoppable",
    "blocked_attempt",
    "combine",
    "concat",
    "countdown",
    "describe",
    "die",
    "die_counted",
    "echo",
    "exit_counted",
    "fail",
    "finish_after",
    "fire_and_forget",
    "flaky",
    "hold",
    "hold_connection",
    "inc",
    "is_future",
    "is_tracer",
    "make_lock",
    "make_tracer",
    "marker_set",
    "meet",
    "never_retry",
    "raise_unpicklable",
    "returns_unloadable",
    "scale",
    "square",
    "stoppable",
    "touch",
    "where",
]


P = ParamSpec("P")
R = TypeVar("R")


def _loose(t: Task[P, R]) -> Task[..., R]:
    """The task, typed to take futures, `allow_failure(...)` and `wait_for=` wherever
    the tests pass them in place of plain arguments."""
    return t


def _loose_async(t: Task[P, Coroutine[Any, Any, R]]) -> Task[..., R]:
    """An async task, typed by what its runs' futures hold: the coroutine's result."""
    return cast("Task[..., R]", t)


class KitError(Exception):
    """The exception the kit's failing tasks raise."""


class KitAbort(BaseException):
    """A BaseException that is not an Exception: a run ended by it is CRASHED."""


class UnpicklableError(Exception):
    """An exception that cannot be pickled (it holds a lock)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


@dataclass
class Pair:
    left: Any
    right: Any


class Payload(BaseModel):
    value: Any
    items: list[Any]


# -- plain values ------------------------------------------------------------------------


@_loose
@task
def echo(value: Any) -> Any:
    return value


@_loose
@task
def add(x: int, y: int) -> int:
    return x + y


@_loose
@task
def inc(x: int) -> int:
    return x + 1


@_loose
@task
def square(x: int) -> int:
    return x * x


@_loose
@task
def scale(x: int, factor: int = 2, *, offset: int = 0) -> int:
    return x * factor + offset


@_loose
@task
def concat(a: Any, b: Any) -> Any:
    return a + b


@_loose
@task
def add_all(x: int, ys: list[int]) -> int:
    return x + sum(ys)


@_loose
@task
def describe(value: Any) -> str:
    """The type and value it received: shows what `allow_failure` passed in."""
    return f"{type(value).__name__}: {value}"


@_loose
@task
def is_future(value: Any) -> bool:
    return isinstance(value, Future)


@_loose
@task
def where(_: Any = None) -> tuple[int, int]:
    """The process and thread the run executed in."""
    return os.getpid(), threading.get_ident()


# -- failures ----------------------------------------------------------------------------


@_loose
@task
def fail(message: str) -> NoReturn:
    raise KitError(message)


@_loose
@task
def abort(message: str) -> NoReturn:
    raise KitAbort(message)


@_loose
@task
def die(code: int) -> NoReturn:
    os._exit(code)


@_loose
@task
def die_counted(rv: Rendezvous, tag: str, code: int) -> NoReturn:
    """Record an attempt, then end the worker's process at once."""
    rv.record(f"attempt-{tag}")
    os._exit(code)


@_loose
@task
def exit_counted(rv: Rendezvous, tag: str, kind: str) -> NoReturn:
    """Record an attempt, then raise a BaseException that is not an Exception: `SystemExit`
    when `kind` is ``"SystemExit"``, else `KitAbort`."""
    rv.record(f"attempt-{tag}")
    if kind == "SystemExit":
        raise SystemExit(3)
    raise KitAbort(f"attempt of {tag!r} ended on purpose")


@_loose
@task
def hold(rv: Rendezvous, name: str, gate: str | None = None) -> tuple[int, int]:
    """Mark `started-<name>`, wait for marker `gate` (if any), mark `ended-<name>`; return
    when the run started and ended (``time.time_ns()``, comparable across processes of
    one machine), so that the test reads the order of runs from the runs themselves."""
    import time

    started = time.time_ns()
    rv.signal(f"started-{name}", str(started))
    if gate is not None:
        rv.wait(gate)
    ended = time.time_ns()
    rv.signal(f"ended-{name}", str(ended))
    return started, ended


@task
def hold_connection(port: int) -> bytes:
    """Connect to 127.0.0.1:`port`, then block in a C call (a socket read) until the other
    end closes. Only a stop of the worker itself ends it early; the test then sees the
    connection closed."""
    import socket

    with socket.create_connection(("127.0.0.1", port)) as connection:
        connection.sendall(f"{os.getpid()}\n".encode())
        return connection.recv(1)


@_loose
@task
def make_lock() -> Any:
    return threading.Lock()


@_loose
@task
def raise_unpicklable(message: str) -> NoReturn:
    raise UnpicklableError(message)


class RefusesToLoad:
    """A value that pickles but cannot be rebuilt from its pickle, anywhere."""

    def __init__(self, size: int) -> None:
        self.payload = b"x" * size

    def __reduce__(self) -> tuple[Any, ...]:
        return (_refuse_to_load, (self.payload,))


def _refuse_to_load(payload: bytes) -> NoReturn:
    raise RuntimeError(f"this value of {len(payload)} bytes refuses to be rebuilt")


@task
def returns_unloadable(size: int) -> RefusesToLoad:
    return RefusesToLoad(size)


@_loose
@task
def flaky(rv: Rendezvous, tag: str, failures: int) -> int:
    """Fail the first `failures` attempts; returns the number of the attempt that passed."""
    import time

    attempt = rv.record(f"attempt-{tag}", repr(time.monotonic()))
    if attempt <= failures:
        raise KitError(f"attempt {attempt} of {tag!r} failed on purpose")
    return attempt


def never_retry(task: Any, task_run: Any, state: State) -> bool:
    return False


# -- synchronisation ---------------------------------------------------------------------


@_loose
@task
def touch(rv: Rendezvous, name: str, *values: Any) -> tuple[Any, ...]:
    """Set marker `name` (proof that the run executed) and return its other arguments."""
    rv.signal(name)
    return values


@_loose
@task
def marker_set(rv: Rendezvous, name: str) -> bool:
    return rv.is_set(name)


@_loose
@task
def stoppable(rv: Rendezvous, tag: str, value: Any = None) -> Any:
    """Signal `started-<tag>` (with where it runs), then block until `release-<tag>`.

    What happens next tells whether the runner stopped the work: `finished-<tag>` if
    it ran on after release, `interrupted-<tag>` if an exception stopped it, neither
    if its worker was killed.
    """
    rv.signal(f"started-{tag}", f"{os.getpid()} {threading.get_ident()}")
    try:
        rv.wait(f"release-{tag}")
    except RendezvousAborted:
        raise
    except BaseException:
        rv.signal(f"interrupted-{tag}")
        raise
    rv.signal(f"finished-{tag}")
    return value


@_loose
@task
def blocked_attempt(rv: Rendezvous, tag: str) -> None:
    """Record an attempt, then block until `release-<tag>`."""
    rv.record(f"attempt-{tag}")
    rv.wait(f"release-{tag}")


@_loose
@task
def meet(rv: Rendezvous, name: str, parties: tuple[str, ...]) -> str:
    """Return only once every one of `parties` is running too."""
    rv.meet(name, parties)
    return name


@_loose
@task
def finish_after(rv: Rendezvous, name: str, gate: str) -> str:
    """Return `name`, once marker `gate` is set (at once when `gate` is empty)."""
    if gate:
        rv.wait(gate)
    return name


class Tracer:
    """A value that marks, through `rv`, every process that unpickles it."""

    def __init__(self, rv: Rendezvous) -> None:
        self.rv = rv

    def __reduce__(self) -> tuple[Any, ...]:
        return (_unpickle_tracer, (self.rv,))


def _unpickle_tracer(rv: Rendezvous) -> Tracer:
    rv.signal(f"unpickled-in-{os.getpid()}")
    return Tracer(rv)


@_loose
@task
def make_tracer(rv: Rendezvous) -> Tracer:
    return Tracer(rv)


@_loose
@task
def is_tracer(value: Any) -> bool:
    return isinstance(value, Tracer)


# -- async -------------------------------------------------------------------------------


@_loose_async
@task
async def async_add(x: int, y: int) -> int:
    await asyncio.sleep(0)
    return x + y


@_loose_async
@task
async def async_fail(message: str) -> NoReturn:
    await asyncio.sleep(0)
    raise KitError(message)


@_loose_async
@task
async def async_flaky(rv: Rendezvous, tag: str, failures: int) -> int:
    await asyncio.sleep(0)
    attempt = rv.record(f"attempt-{tag}")
    if attempt <= failures:
        raise KitError(f"attempt {attempt} of {tag!r} failed on purpose")
    return attempt


@_loose_async
@task
async def async_meet(rv: Rendezvous, name: str, parties: tuple[str, ...], then: str) -> str:
    """Meet the other parties, then wait for marker `then` (when not empty)."""
    await rv.meet_async(name, parties)
    if then:
        await rv.wait_async(then)
    return name


@_loose_async
@task
async def async_stoppable(rv: Rendezvous, tag: str) -> None:
    rv.signal(f"started-{tag}", f"{os.getpid()} {threading.get_ident()}")
    try:
        await rv.wait_async(f"release-{tag}")
    except RendezvousAborted:
        raise
    except BaseException:
        rv.signal(f"interrupted-{tag}")
        raise
    rv.signal(f"finished-{tag}")


@_loose
@task
async def async_blocks_loop(rv: Rendezvous, tag: str) -> str:
    """Block the event loop (a wait that never awaits) until `release-<tag>`."""
    rv.signal(f"started-{tag}")
    rv.wait(f"release-{tag}")
    rv.signal(f"finished-{tag}")
    return "returned"


# -- nested ------------------------------------------------------------------------------


@_loose
@task
def countdown(n: int) -> int:
    """Submit itself `n` levels deep, each level waiting for the one below."""
    if n == 0:
        return 0
    return int(countdown.submit(n - 1).result()) + 1


@_loose
@task
def fire_and_forget(message: str) -> str:
    """Submit a failing run, never look at it, and return its name."""
    return fail.submit(message).name


def count_words(text: str) -> int:
    return len(text.split())


def extract_emails(text: str) -> list[str]:
    return re.findall(r"[\w.+-]+@[\w-]+\.[\w.-]+", text)


@_loose
@task
def analyze_texts(texts: list[str]) -> dict[str, list[Any]]:
    """The nested mapped tasks example of the docs: a task that maps two other tasks."""
    futures = {op.__name__: task(op).map(texts) for op in [count_words, extract_emails]}
    wait([f for futs in futures.values() for f in futs])
    return {name: [f.result() for f in futs] for name, futs in futures.items()}


# -- random graphs -----------------------------------------------------------------------


def flatten(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [item for key in sorted(value) for item in flatten(value[key])]
    if isinstance(value, (list, tuple)):
        return [item for element in value for item in flatten(element)]
    return [value]


def combine_values(op: str, const: int, inputs: Any) -> int:
    """One node of a random task graph; the sequential reference calls it directly."""
    if op == "fail":
        raise KitError(f"node with constant {const} failed on purpose")
    values = [-100 if isinstance(v, BaseException) else int(v) for v in flatten(inputs)]
    if op == "sum":
        return const + sum(values)
    if op == "max":
        return max([const, *values])
    if op == "neg":
        return const - sum(values)
    raise ValueError(f"unknown op {op!r}")


@_loose
@task
def combine(op: str, const: int, inputs: Any) -> int:
    return combine_values(op, const, inputs)
