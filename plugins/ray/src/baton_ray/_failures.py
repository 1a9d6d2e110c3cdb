"""How the `ray` runner words what went wrong outside the engine: a Ray task that failed
(its worker died, it was cancelled or timed out, its value could not be stored), and
arguments that cannot be sent."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import ray
from baton import CrashedRun, InvalidOptionsError, State
from baton.runners import timed_out, unpicklable_arguments, worker_lost
from ray import exceptions as ray_errors

if TYPE_CHECKING:
    from baton.runners import RunCall, TaskRun

__all__ = ["argument_error", "failure_state", "first_line", "read_error"]

_REFUSED = (
    ray_errors.RuntimeEnvSetupError,
    ray_errors.TaskUnschedulableError,
    ray_errors.ObjectStoreFullError,
    ray_errors.OutOfDiskError,
)


def failure_state(run: TaskRun, stop: str | None, exc: BaseException) -> State:
    """The state of a run whose Ray task failed outside the engine; `stop` says why the
    driver stopped it, if it did ("timeout", "cancel", "shutdown")."""
    name = run.name
    if isinstance(exc, ray_errors.TaskCancelledError) or stop is not None:
        if stop == "timeout":
            seconds = run.task.options.timeout_seconds or 0.0
            return timed_out(
                name, seconds, "its Ray task was cancelled and its worker process killed"
            )
        if stop == "shutdown":
            message = f"Task run {name!r} was stopped: task runner 'ray' shut down without waiting."
            return State.crashed(CrashedRun(message), message)
        return State.cancelled(f"Task run {name!r} was cancelled while it ran.")
    if isinstance(exc, ray_errors.RayTaskError):
        cause = exc.cause if isinstance(exc.cause, BaseException) else exc
        text = f"{type(cause).__name__}: {cause}".strip()
        if isinstance(cause, ray_errors.RaySystemError):
            error: BaseException = RuntimeError(
                f"Task run {name!r} could not start on its Ray worker: {text}. Modules the "
                "task and its arguments need must be importable there: install them on the "
                "workers, or ship them with runtime_env (py_modules, working_dir)."
            )
        elif "pickl" in text.lower() or "serializ" in text.lower():
            import pickle

            error = pickle.PicklingError(
                f"The result of task run {name!r} (task {run.task.name!r}) cannot be "
                f"pickled ({first_line(text)}), so Ray cannot store it. Return something "
                "picklable (plain data, or a path to where the value was written)."
            )
        else:
            error = RuntimeError(f"Task run {name!r} failed in Ray: {first_line(text)}")
        error.__cause__ = cause
        return State.failed(error)
    if isinstance(exc, ray_errors.RaySystemError):
        # Raised here, by ray.get of the outcome: it came back but cannot be rebuilt.
        error = RuntimeError(
            f"Task run {name!r} ended on its Ray worker, but what it reported cannot be "
            f"unpickled here: {first_line(str(exc))}. Its result and errors must be of "
            "types importable in the flow's process."
        )
        error.__cause__ = exc
        return State.failed(error)
    if isinstance(exc, _REFUSED):
        failed = RuntimeError(
            f"Ray could not run task run {name!r}: {type(exc).__name__}: {first_line(str(exc))}"
        )
        failed.__cause__ = exc
        return State.failed(failed)
    message = (
        f"Task run {name!r} crashed: its Ray worker died while running it "
        f"({type(exc).__name__}: {first_line(str(exc))})."
    )
    return worker_lost(message, exc)


def read_error(ref: Any) -> None:
    """Read the error a failed task stored in its other ObjectRef too: Ray logs an error
    stored in an ObjectRef that nobody read as unhandled."""
    if ref is None:
        return
    try:
        ray.get(ref, timeout=0)
    except BaseException:
        pass


def first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else text


def argument_error(run: TaskRun, exc: Exception, call: RunCall) -> Exception:
    """A clear error for arguments Ray could not send (they cannot be pickled); `call`
    is what was sent, upstream futures as placeholders."""
    if isinstance(exc, InvalidOptionsError):
        return exc
    return unpicklable_arguments(
        run,
        exc,
        "Ray",
        "Arguments travel to Ray workers pickled: pass something picklable instead (a "
        "path rather than an open file, settings rather than a client, lock or "
        "connection), or create the object inside the task.",
        args=call.args,
        kwargs=call.kwargs,
    )
