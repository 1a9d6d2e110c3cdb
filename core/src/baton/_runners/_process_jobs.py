"""The parent's record of the `process` runner's runs and workers: a run on its way
(`Job`), a worker process and the runs it holds (`WorkerProcess`), and how both end."""

from __future__ import annotations

import os
import pickle
import signal
import socket
import subprocess
from collections import deque
from typing import TYPE_CHECKING, Any

from baton import CrashedRun, State
from baton._runners._worker import describe_exit
from baton.runners import Attempts, cloudpickle_dumps, unpicklable_arguments

if TYPE_CHECKING:
    from baton import Task, TaskRun

__all__ = [
    "STOP_GRACE",
    "Job",
    "WorkerProcess",
    "end",
    "kill_group",
    "pickle_arguments",
    "pickle_task",
    "reap",
    "shutdown_state",
]

STOP_GRACE = 10.0  # seconds a worker gets to exit after STOP before it is killed
_PLAIN = frozenset({int, float, str, bytes, bool, type(None)})


class Job:
    """One run on its way through the pool (queued, in a worker, or waiting to retry)."""

    __slots__ = (
        "attempts",
        "blob",
        "cancelled",
        "dispatched",
        "key",
        "mark_running",
        "payload",
        "run",
        "timeout",
    )

    def __init__(
        self, run: TaskRun, key: int, blob: bytes, payload: bytes, timeout: float | None
    ) -> None:
        self.run = run
        self.key = key
        self.blob = blob
        self.payload = payload
        self.timeout = timeout
        self.attempts = Attempts(run)
        self.cancelled = False
        self.dispatched = False
        self.mark_running = True


class WorkerProcess:
    """The parent's side of one worker: its process, socket, and the runs it holds."""

    __slots__ = (
        "deadline",
        "forget",
        "inbox",
        "jobs",
        "kill_reason",
        "known",
        "out",
        "out_offset",
        "path",
        "pid",
        "proc",
        "ready",
        "sock",
        "timed",
        "writing",
    )

    def __init__(self, proc: subprocess.Popen[bytes], sock: socket.socket) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.sock = sock
        self.inbox = bytearray()
        self.out: deque[bytes] = deque()
        self.out_offset = 0
        self.writing = False
        self.jobs: deque[Job] = deque()  # sent and not reported, in the order sent
        self.known: set[int] = set()
        self.path: list[str] = []  # the sys.path it was last sent
        self.forget: list[int] = []
        self.ready = False
        self.deadline: float | None = None
        self.timed: Job | None = None
        self.kill_reason: str | None = None


def end(job: Job, state: State) -> None:
    run = job.run
    if run.future.done():
        return
    run.set_state(job.attempts.finish(state))


def shutdown_state(run: TaskRun, pid: int) -> State:
    message = (
        f"Task run {run.name!r} was stopped: task runner 'process' shut down without "
        f"waiting, and its worker process (pid {pid}) was killed."
    )
    return State.crashed(CrashedRun(message), message)


def kill_group(worker: WorkerProcess) -> None:
    try:
        os.killpg(worker.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        try:
            worker.proc.kill()
        except OSError:
            pass


def reap(worker: WorkerProcess, patient: bool) -> str:
    """Wait for a worker that closed its socket to exit; describe how it ended."""
    proc = worker.proc
    try:
        code = proc.wait(timeout=STOP_GRACE if patient else 2.0)
    except subprocess.TimeoutExpired:
        kill_group(worker)
        code = proc.wait()
    return describe_exit(code)


# -- what the parent sends ----------------------------------------------------------


def pickle_arguments(run: TaskRun) -> bytes:
    """The run's arguments for the worker: ``(args, kwargs)``, or ``(args, kwargs,
    limits)`` in a flow run with limits (see `RunCall.limits`)."""
    args, kwargs = run.args, run.kwargs
    if run.scope.limiter is not None:
        try:
            return cloudpickle_dumps((args, kwargs, run.run_limits()))
        except Exception as exc:
            raise _argument_error(run, exc) from exc
    if not kwargs:
        for value in args:
            if type(value) not in _PLAIN:
                break
        else:
            return pickle.dumps((args, kwargs), pickle.HIGHEST_PROTOCOL)
    try:
        return cloudpickle_dumps((args, kwargs))
    except Exception as exc:
        raise _argument_error(run, exc) from exc


def _argument_error(run: TaskRun, exc: Exception) -> pickle.PicklingError:
    return unpicklable_arguments(
        run,
        exc,
        "a worker process",
        "Arguments travel to the 'process' runner's workers pickled (with cloudpickle): "
        "pass something picklable instead (a path rather than an open file, settings "
        "rather than a client, lock or connection), create the object inside the task, "
        "or run this task on the 'thread' runner.",
    )


def pickle_task(task: Task[..., Any]) -> bytes:
    try:
        return cloudpickle_dumps(task)
    except Exception as exc:
        raise pickle.PicklingError(
            f"Task {task.name!r} cannot be pickled to send it to a worker process of the "
            f"'process' runner ({type(exc).__name__}: {exc}). Its function, its options' "
            "hooks, or a global or closure variable they use hold something unpicklable "
            "(a lock, an open file or connection, a client): create that object inside "
            "the task, or run the task on the 'thread' runner."
        ) from exc
