"""Exceptions raised by Baton."""

from __future__ import annotations

__all__ = [
    "BatonError",
    "CancelledRun",
    "CrashedRun",
    "FlowRunFailed",
    "InvalidOptionsError",
    "MappingError",
    "PluginLoadError",
    "RemoteTaskError",
    "RemoteTraceback",
    "RunnerClosedError",
    "TaskTimeoutError",
    "UnknownRunnerError",
    "UpstreamTaskError",
]


class BatonError(Exception):
    """Base class of every error that Baton itself raises."""


class InvalidOptionsError(BatonError, ValueError):
    """Task, flow or runner options that do not validate.

    The message names each offending option and what was wrong with it.
    """


class MappingError(BatonError, ValueError):
    """`.map` was given arguments it cannot map over (no iterable, or mismatched lengths)."""


class UpstreamTaskError(BatonError):
    """A task run did not start because a run it depends on did not complete."""


class CrashedRun(BatonError):
    """A task run did not end by itself: its worker died, it was killed, or a
    `BaseException` such as `KeyboardInterrupt` or `SystemExit` ended it."""


class CancelledRun(BatonError):
    """The task run was cancelled before it finished."""


class TaskTimeoutError(BatonError, TimeoutError):
    """A task run exceeded its `timeout_seconds`."""


class RunnerClosedError(BatonError, RuntimeError):
    """Work was submitted to a task runner that has been shut down."""


class UnknownRunnerError(BatonError, LookupError):
    """No installed task runner has the requested name or URL scheme."""


class PluginLoadError(BatonError, ImportError):
    """A plugin failed to load while strict plugin loading was on."""


class FlowRunFailed(BatonError):
    """A flow run ended in a failed state without an exception of its own to re-raise
    (for example, a task failure that nothing in the flow looked at)."""


class RemoteTaskError(BatonError):
    """Stands in for an exception raised on a worker that could not travel back to the
    flow (it cannot be pickled, or not rebuilt here): it keeps the original's type
    name, message and traceback text."""

    def __init__(self, type_name: str, message: str, traceback_text: str) -> None:
        super().__init__(type_name, message, traceback_text)
        self.type_name = type_name
        self.message = message
        self.traceback_text = traceback_text
        if traceback_text:
            # As for exceptions that travel: tracebacks show the worker's side too.
            self.__cause__ = RemoteTraceback(traceback_text)

    def __str__(self) -> str:
        detail = f"{self.type_name}: {self.message}" if self.message else self.type_name
        return f"{detail} (raised on a worker; the exception itself could not be sent back)"


class RemoteTraceback(Exception):
    """The traceback text of an exception raised on a worker, attached as the
    `__cause__` of the exception rebuilt in the flow's process, so that tracebacks
    show both sides."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f'\n"""\n{self.text}"""'
