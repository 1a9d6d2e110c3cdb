"""The attempt policy of a run: whether and when to try again, and the states that say so.

One `Attempts` object follows one run through its attempts. The engine drives it
(sync and async alike), and so does every runner that sees an attempt end outside
the engine: a worker that died, a hard timeout that killed it. That is the only
place where the retry rule lives:

- an attempt that ends FAILED (an exception, a timeout) is retried while
  `retries` allows and `retry_condition_fn` agrees;
- an attempt that ends CRASHED because its worker was lost (the process died, the
  node went away) is retried the same way: the work did not fail, its home did;
- an attempt ended by a `BaseException` the task raised (`KeyboardInterrupt`,
  `SystemExit`) is an interruption, not a failure, and is never retried;
- COMPLETED and CANCELLED attempts are final.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, final

from baton._errors import CrashedRun, TaskTimeoutError
from baton._states import State, StateType

if TYPE_CHECKING:
    from baton._engine import RunInfo

__all__ = [
    "FINAL_STATE_TYPES",
    "Attempts",
    "Retry",
    "WorkerLostError",
    "failure_state",
    "run_hooks",
    "timed_out",
    "worker_lost",
]

logger = logging.getLogger("baton.engine")

FINAL_STATE_TYPES: Final = frozenset(
    {StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED}
)
"""The state types a run ends in; PENDING and RUNNING are the only others."""


class WorkerLostError(CrashedRun):
    """The worker running an attempt was lost: its process died (a segfault, `os._exit`,
    the system's out-of-memory killer) or its machine left the cluster.

    A CRASHED state carrying this error is retried like a failure (see `Attempts`).
    """


def worker_lost(message: str, cause: BaseException | None = None) -> State:
    """The CRASHED state of an attempt whose worker was lost, with a `WorkerLostError`:
    `Attempts.after` retries it like a failure.

    `message` says how (it names the run and, where known, the process and its exit
    code or signal); `cause`, such as the engine's own error, becomes the error's
    ``__cause__``.
    """
    error = WorkerLostError(message)
    if cause is not None:
        error.__cause__ = cause
    return State.crashed(error, message)


def timed_out(run_name: str, seconds: float, detail: str = "") -> State:
    """The state of an attempt that ran past its `timeout_seconds`: FAILED, named
    TimedOut, with a `TaskTimeoutError`; pass it to `Attempts.after`, which retries
    it like any failure.

    `detail` says what was done about it ("its worker process (pid 12) was killed").
    """
    message = f"Task run {run_name!r} exceeded its timeout of {seconds:g} s" + (
        f"; {detail}." if detail else "."
    )
    return State.failed(TaskTimeoutError(message), name="TimedOut")


def failure_state(exc: BaseException, run: RunInfo) -> State:
    """The state of an attempt that raised `exc`: FAILED for an `Exception` (named
    TimedOut for a timeout), CRASHED for any other `BaseException`."""
    if isinstance(exc, TaskTimeoutError):
        return State.failed(exc, name="TimedOut")
    if isinstance(exc, Exception):
        return State.failed(exc)
    try:
        text = str(exc)
    except Exception:
        text = ""
    return State.crashed(
        exc,
        f"Task run {run.name!r} was ended by {type(exc).__name__}"
        + (f": {text}" if text else "")
        + ", a BaseException, before it could finish.",
    )


def run_hooks(run: RunInfo, state: State) -> None:
    """Call the task's `on_completion` or `on_failure` hooks for a run's final state.

    Whatever a hook raises, a BaseException such as `SystemExit` included, is logged
    and changes nothing, as for a future's done callbacks: the run has ended, and the
    worker that ended it (a thread, a process, a cluster's) must go on.
    """
    options = run.task.options
    hooks = options.on_completion if state.type is StateType.COMPLETED else options.on_failure
    for hook in hooks:
        try:
            hook(run.task, run, state)
        except BaseException:
            logger.exception(
                "Hook %r of task run %r raised; the run's state stays %r",
                getattr(hook, "__name__", hook),
                run.name,
                state,
            )


@final
class Retry:
    """The decision to try a run again: after `delay` seconds, reporting `state`
    (PENDING, named Retrying) meanwhile. `attempt` is the number of the next attempt."""

    __slots__ = ("attempt", "delay", "state")

    def __init__(self, attempt: int, delay: float, state: State) -> None:
        self.attempt = attempt
        self.delay = delay
        self.state = state

    def __repr__(self) -> str:
        return f"Retry(attempt={self.attempt}, delay={self.delay:g})"


@final
class Attempts:
    """The attempts of one run: feed it each attempt's end, it says what comes next.

    It holds the one retry rule: FAILED attempts are
    retried while the task's `retries` allow and its `retry_condition_fn` agrees;
    CRASHED ones only when their worker was lost (`worker_lost`); a `BaseException`
    the task raised is never retried. `run` is the `TaskRun` (or `RunCall`);
    `first` the number of the attempt being made, for a run sent again.

    >>> from types import SimpleNamespace
    >>> from baton import State, task
    >>> @task(retries=1)
    ... def flaky(): ...
    >>> run = SimpleNamespace(id=1, name="flaky-1", task=flaky)  # a TaskRun, say
    >>> attempts = Attempts(run)
    >>> retry = attempts.after(State.failed(ValueError("boom")))
    >>> retry.attempt, retry.state.name
    (2, 'Retrying')
    >>> attempts.after(State.failed(ValueError("again"))) is None
    True
    >>> attempts.number
    2

    A runner that sends a run to a worker where the engine makes the attempts
    itself keeps its count with `note` (each Retrying state the worker reports),
    so that a crash after a retry continues the count.
    """

    __slots__ = ("_instead", "number", "report", "run")

    def __init__(
        self, run: RunInfo, first: int = 1, report: Callable[[State], object] | None = None
    ) -> None:
        self.run = run
        self.number = first
        """The number of the attempt being made (the first is 1)."""
        self.report = report
        """Hears the Retrying state of each retry and RUNNING as it starts (`retry_in`,
        `resume`)."""
        self._instead: State | None = None

    def after(self, state: State) -> Retry | None:
        """The attempt being made ended in `state`: a `Retry`, or None if `state` is final.

        On a `Retry`, `number` moves on to the next attempt. When it returns None the
        caller ends the run with `state` (see `finish`).
        """
        delay = self._retry_delay(state)
        if delay is None:
            return None
        self.number += 1
        retrying = State.pending("Retrying", f"Attempt {self.number} after: {state.message}")
        return Retry(self.number, delay, retrying)

    def retry_in(self, state: State) -> float | None:
        """Like `after`, for a caller that makes the next attempt itself: the seconds to
        wait before it (the Retrying state is reported), or None when `state` is final.
        Call `resume()` as the next attempt starts."""
        retry = self.after(state)
        if retry is None:
            return None
        if self.report is not None:
            self.report(retry.state)
        return retry.delay

    def resume(self) -> None:
        """The next attempt starts: RUNNING is reported."""
        if self.report is not None:
            self.report(State.running())

    def stop(self) -> None:
        """Make no more attempts: the run already ended (a watchdog ended it on time)."""
        self.number = max(self.number, self.run.task.options.retries + 1)

    def note(self, state: State) -> None:
        """A worker that retries by itself reported `state`: count its Retrying states."""
        if state.type is StateType.PENDING and state.name == "Retrying":
            self.number += 1

    def finish(self, state: State) -> State:
        """End the run with `state`: its hooks run, and the final state is returned.

        That is `state`, unless deciding on a retry failed (a `retry_delay_seconds`
        callable that raised): then the run fails with that error.
        """
        instead, self._instead = self._instead, None
        if instead is not None:
            state = instead
        options = self.run.task.options
        if options.on_completion or options.on_failure:
            run_hooks(self.run, state)
        return state

    def _retry_delay(self, state: State) -> float | None:
        kind = state.type
        if kind is StateType.FAILED:
            pass
        elif not (kind is StateType.CRASHED and isinstance(state.error, WorkerLostError)):
            return None
        run = self.run
        options = run.task.options
        if self.number > options.retries:
            return None
        condition = options.retry_condition_fn
        if condition is not None:
            try:
                if not condition(run.task, run, state):
                    return None
            except Exception:
                logger.exception(
                    "retry_condition_fn of task %r raised; not retrying", run.task.name
                )
                return None
        try:
            delay: float = options.delay_for(self.number)
        except Exception as exc:
            exc.__cause__ = exc.__cause__ or state.error
            self._instead = State.failed(exc)
            return None
        jitter = options.retry_jitter_factor
        if jitter and delay > 0:
            delay = max(0.0, delay * (1.0 + random.uniform(-jitter, jitter)))
        # A wait longer than that overflows time.sleep and Event.wait; none ends sooner.
        return min(delay, threading.TIMEOUT_MAX)
