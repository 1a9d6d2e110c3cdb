"""What the fuzz test (`test_fuzz`) runs: task bodies of every shape, hooks, retry
conditions, retry-delay callables and done callbacks, each picklable and importable by
name, so that worker processes (the `process` runner's, Dask's, Ray's) can run them.

A body counts its attempts with a `Rendezvous` marker, fails its first `failures`
attempts in the way `fail_kind` names, then ends the way `ok_kind` names.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, Final

from baton import State
from baton.testing._rendezvous import Rendezvous
from baton.testing._tasks import UnpicklableError

ALWAYS: Final = 10**9
"""`failures` of a body that fails every attempt."""

VALUE: Final = 42
"""What a body returns when it ends well."""

SLEEP_SECONDS: Final = 0.05
"""How long a body that "sleeps a little" sleeps."""

OVERRUN_SECONDS: Final = 60.0
"""How long a body that runs past its timeout would run if nothing stopped it: a safety
net, never a verdict."""


class TwoArgError(Exception):
    """An error that cannot be rebuilt from its pickle: its constructor needs two
    arguments, its `args` hold one."""

    def __init__(self, what: str, detail: str) -> None:
        super().__init__(what)
        self.detail = detail


class UnprintableError(Exception):
    """An error whose `str()` raises."""

    def __str__(self) -> str:
        raise RuntimeError("this error has no text")


class HookEscape(BaseException):
    """A BaseException of the user's own."""


FAIL_KINDS: Final = (
    "raise",
    "raise_unpicklable",
    "raise_unprintable",
    "raise_two_args",
    "sleep_past_timeout",
    "system_exit",
    "keyboard_interrupt",
)
OK_KINDS: Final = ("value", "sleep", "unpicklable_value")
RAISES: Final = (
    "nothing",
    "ValueError",
    "SystemExit",
    "KeyboardInterrupt",
    "GeneratorExit",
    "HookEscape",
)


def _raise(kind: str) -> None:
    if kind == "ValueError":
        raise ValueError("raised on purpose")
    if kind == "SystemExit":
        raise SystemExit(3)
    if kind == "KeyboardInterrupt":
        raise KeyboardInterrupt
    if kind == "GeneratorExit":
        raise GeneratorExit
    if kind == "HookEscape":
        raise HookEscape("raised on purpose")


def _fail(kind: str, attempt: int) -> None:
    if kind == "raise":
        raise ValueError(f"attempt {attempt} failed on purpose")
    if kind == "raise_unpicklable":
        raise UnpicklableError(f"attempt {attempt} failed on purpose")
    if kind == "raise_unprintable":
        raise UnprintableError
    if kind == "raise_two_args":
        raise TwoArgError(f"attempt {attempt} failed on purpose", "detail")
    if kind == "system_exit":
        raise SystemExit(3)
    if kind == "keyboard_interrupt":
        raise KeyboardInterrupt
    raise AssertionError(f"unknown failure {kind!r}")


def _value(kind: str) -> Any:
    if kind == "unpicklable_value":
        return threading.Lock()
    return VALUE


def body(rv: Rendezvous, tag: str, failures: int, fail_kind: str, ok_kind: str) -> Any:
    attempt = rv.record(tag)
    if attempt <= failures:
        if fail_kind == "sleep_past_timeout":
            # Short sleeps: a thread told to stop (the engine's timeout) stops at once.
            end = time.monotonic() + OVERRUN_SECONDS
            while time.monotonic() < end:
                time.sleep(0.01)
        _fail(fail_kind, attempt)
    if ok_kind == "sleep":
        time.sleep(SLEEP_SECONDS)
    return _value(ok_kind)


async def async_body(rv: Rendezvous, tag: str, failures: int, fail_kind: str, ok_kind: str) -> Any:
    attempt = rv.record(tag)
    if attempt <= failures:
        if fail_kind == "sleep_past_timeout":
            await asyncio.sleep(OVERRUN_SECONDS)
        _fail(fail_kind, attempt)
    if ok_kind == "sleep":
        await asyncio.sleep(SLEEP_SECONDS)
    return _value(ok_kind)


class Hook:
    """An `on_completion` / `on_failure` hook: it leaves a marker, then raises `raises`."""

    def __init__(self, rv: Rendezvous, marker: str, raises: str) -> None:
        self.rv = rv
        self.marker = marker
        self.raises = raises
        self.__name__ = f"hook_raising_{raises}"

    def __call__(self, task: Any, task_run: Any, state: State) -> None:
        self.rv.signal(self.marker)
        _raise(self.raises)

    def __repr__(self) -> str:
        return f"Hook({self.marker!r}, raises={self.raises!r})"


class DoneCallback:
    """A future's done callback that raises `raises`."""

    def __init__(self, raises: str) -> None:
        self.raises = raises

    def __call__(self, future: Any) -> None:
        _raise(self.raises)

    def __repr__(self) -> str:
        return f"DoneCallback(raises={self.raises!r})"


class Condition:
    """A `retry_condition_fn` that answers True or False, or raises."""

    def __init__(self, answer: str) -> None:
        self.answer = answer

    def __call__(self, task: Any, task_run: Any, state: State) -> bool:
        if self.answer == "raise":
            raise ValueError("retry_condition_fn raised on purpose")
        return self.answer == "true"

    def __repr__(self) -> str:
        return f"Condition({self.answer!r})"


class Delays:
    """A `retry_delay_seconds` callable: a small delay, or junk of the kind named."""

    def __init__(self, gives: str) -> None:
        self.gives = gives

    def __call__(self, retries: int) -> Any:
        gives = self.gives
        if gives == "small":
            return 0.001
        if gives == "small_list":
            return [0.001] * min(retries, 5)
        if gives == "string":
            return "soon"
        if gives == "negative":
            return -1.0
        if gives == "nan":
            return float("nan")
        if gives == "function":
            return lambda: 1.0
        if gives == "raise":
            raise RuntimeError("the delay callable raised on purpose")
        raise AssertionError(f"unknown delays {gives!r}")

    def __repr__(self) -> str:
        return f"Delays({self.gives!r})"
