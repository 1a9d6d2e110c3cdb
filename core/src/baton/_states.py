"""States of task and flow runs."""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable
from typing import Any, Final, final

from baton._errors import CancelledRun, CrashedRun, FlowRunFailed

__all__ = ["LazyResult", "State", "StateType", "upstream_failed"]


class StateType(str, enum.Enum):
    """The kind of a state. `PENDING` and `RUNNING` are the only non-final kinds."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CRASHED = "CRASHED"
    CANCELLED = "CANCELLED"

    def __repr__(self) -> str:
        return f"StateType.{self.value}"


_FINAL: Final = frozenset(
    {StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED}
)
_DEFAULT_NAMES: Final = {t: t.value.capitalize() for t in StateType}
_NO_DATA: Final = object()


@final
class State:
    """The state of a task or flow run at one moment.

    A final state carries the run's result (`COMPLETED`) or the exception that
    ended it (`FAILED`, `CRASHED`, `CANCELLED`). `name` refines the type:
    ``Retrying`` (pending), ``TimedOut`` (failed), ``UpstreamFailed`` (failed).

    >>> state = State.completed(42)
    >>> state.is_completed(), state.result()
    (True, 42)
    """

    __slots__ = ("_data", "message", "name", "timestamp", "type")

    type: StateType
    name: str
    message: str | None
    timestamp: float
    _data: Any

    def __init__(
        self,
        type: StateType,
        name: str | None = None,
        message: str | None = None,
        *,
        data: Any = _NO_DATA,
        timestamp: float | None = None,
    ) -> None:
        self.type = type
        self.name = name or _DEFAULT_NAMES[type]
        self.message = message
        self._data = data
        self.timestamp = time.time() if timestamp is None else timestamp

    # -- constructors -------------------------------------------------------------

    @classmethod
    def pending(cls, name: str | None = None, message: str | None = None) -> State:
        return cls(StateType.PENDING, name, message)

    @classmethod
    def running(cls) -> State:
        return cls(StateType.RUNNING)

    @classmethod
    def completed(cls, result: Any = None, message: str | None = None) -> State:
        return cls(StateType.COMPLETED, None, message, data=result)

    @classmethod
    def completed_lazily(cls, load: Callable[[], Any], message: str | None = None) -> State:
        """A completed state whose result stays where it was computed until it is read.

        `load()` fetches it (once) the first time `result()` asks. Runners whose results
        live on remote workers (Dask, Ray) report completion this way, so that data
        moves to the caller only when the caller reads it.
        """
        return cls(StateType.COMPLETED, None, message, data=LazyResult(load))

    @classmethod
    def failed(
        cls, error: BaseException, message: str | None = None, name: str | None = None
    ) -> State:
        return cls(StateType.FAILED, name, message or _describe(error), data=error)

    @classmethod
    def crashed(cls, error: BaseException, message: str | None = None) -> State:
        return cls(StateType.CRASHED, None, message or _describe(error), data=error)

    @classmethod
    def cancelled(cls, message: str = "Cancelled before it finished.") -> State:
        return cls(StateType.CANCELLED, None, message, data=CancelledRun(message))

    # -- predicates ---------------------------------------------------------------

    def is_pending(self) -> bool:
        return self.type is StateType.PENDING

    def is_running(self) -> bool:
        return self.type is StateType.RUNNING

    def is_completed(self) -> bool:
        return self.type is StateType.COMPLETED

    def is_failed(self) -> bool:
        return self.type is StateType.FAILED

    def is_crashed(self) -> bool:
        return self.type is StateType.CRASHED

    def is_cancelled(self) -> bool:
        return self.type is StateType.CANCELLED

    def is_final(self) -> bool:
        return self.type in _FINAL

    # -- data ---------------------------------------------------------------------

    @property
    def error(self) -> BaseException | None:
        """The exception that ended the run, or None if it did not fail."""
        if self.type is StateType.COMPLETED or self._data is _NO_DATA:
            return None
        data = self._data
        return data if isinstance(data, BaseException) else None

    def result(self, raise_on_failure: bool = True) -> Any:
        """The run's return value; for a failed run, raise (or return) its exception.

        A run crashed by a `BaseException` such as `KeyboardInterrupt` or `SystemExit`
        raises `CrashedRun` caused by it (`.error` keeps the original): re-raising it
        where the result is read would look like a Ctrl-C or an exit of that thread.

        Raises `ValueError` on a state that is not final.
        """
        if self.type is StateType.COMPLETED:
            data = self._data
            if data is _NO_DATA:
                return None
            return data.get() if type(data) is LazyResult else data
        if not self.is_final():
            raise ValueError(f"{self!r} is not final: there is no result yet.")
        error = self.error
        if error is None or (self.type is StateType.CRASHED and not isinstance(error, Exception)):
            message = self.message or f"The run ended in state {self!r}."
            cause = error
            error = (
                CrashedRun(message) if self.type is StateType.CRASHED else FlowRunFailed(message)
            )
            error.__cause__ = cause
        if raise_on_failure:
            raise error
        return error

    def __repr__(self) -> str:
        if self.message and self.type is not StateType.COMPLETED:
            return f"{self.name}({self.message!r})"
        return f"{self.name}()"

    def __reduce__(self) -> tuple[Any, ...]:
        data = self._data
        if type(data) is LazyResult:
            data = data.get()
        if self.type is not StateType.COMPLETED and isinstance(data, BaseException):
            # Pickling drops an exception's traceback: its text travels beside it, and
            # becomes the `__cause__` of the rebuilt exception (see `_rebuild_failure`).
            trace = data.__traceback__
            if trace is not None:
                import traceback

                text = "".join(traceback.format_exception(type(data), data, trace))
                args = (self.type, self.name, self.message, data, self.timestamp, text)
                return (_rebuild_failure, args)
        return (_rebuild, (self.type, self.name, self.message, data, self.timestamp))


@final
class LazyResult:
    """A result fetched on first use (see `State.completed_lazily`)."""

    __slots__ = ("_load", "_lock", "_value")

    def __init__(self, load: Callable[[], Any]) -> None:
        self._load: Callable[[], Any] | None = load
        self._lock = threading.Lock()
        self._value: Any = None

    def get(self) -> Any:
        if self._load is not None:
            with self._lock:
                if self._load is not None:
                    self._value = self._load()
                    self._load = None
        return self._value


def upstream_failed(run_name: str, upstream_name: str, upstream_state: State) -> State:
    """The terminal state of a run that did not start because an upstream did not complete."""
    from baton._errors import UpstreamTaskError

    cause = upstream_state.error
    if upstream_state.name == "UpstreamFailed":
        # Its message already quotes its own upstream's: quoting it again at every link
        # of a chain would grow the message exponentially. Point at the root cause.
        described = upstream_state.name
        if isinstance(cause, UpstreamTaskError) and cause.__cause__ is not None:
            cause = cause.__cause__
    else:
        described = repr(upstream_state)
    message = (
        f"Task run {run_name!r} did not run: upstream task run {upstream_name!r} "
        f"ended in state {described}."
    )
    error = UpstreamTaskError(message)
    error.__cause__ = cause
    return State(StateType.FAILED, "UpstreamFailed", message, data=error)


def _rebuild(type: StateType, name: str, message: str | None, data: Any, ts: float) -> State:
    return State(type, name, message, data=data, timestamp=ts)


def _rebuild_failure(
    type: StateType, name: str, message: str | None, data: Any, ts: float, trace: str
) -> State:
    if isinstance(data, BaseException) and data.__cause__ is None:
        from baton._errors import RemoteTraceback

        data.__cause__ = RemoteTraceback(trace)
    return State(type, name, message, data=data, timestamp=ts)


def _describe(error: BaseException) -> str:
    try:
        text = str(error)
    except Exception as exc:  # the error still fails its run, under its own name
        return f"{type(error).__name__} (its str() raised {type(exc).__name__})"
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
