"""The parent's record of the `process` runner's runs and workers: a run on its way
(`Job`), a worker process and the runs it holds (`WorkerProcess`), and how both end."""

from __future__ import annotations

import os
import pickle
import signal
import socket
import subprocess
import sys
from collections import deque
from typing import TYPE_CHECKING, Any

from baton import CrashedRun, State
from baton._runners._process_shm import (
    BufferRef,
    can_lend,
    file_prefix,
    lend_buffers,
    remove,
    share_buffers,
)
from baton._runners._worker import describe_exit
from baton._travel import LARGE_BYTES
from baton.runners import Attempts, cloudpickle_dumps, unpicklable_arguments

if TYPE_CHECKING:
    from baton import Task, TaskRun

__all__ = [
    "STOP_GRACE",
    "Job",
    "Session",
    "WorkerProcess",
    "end",
    "kill_group",
    "packed_limits",
    "pickle_arguments",
    "pickle_task",
    "reap",
    "shutdown_state",
]

STOP_GRACE = 10.0  # seconds a worker gets to exit after STOP before it is killed
_PLAIN = frozenset({int, float, str, bytes, bool, type(None)})
_NOTHING: frozenset[str] = frozenset()


class Session:
    """The runs one runner (one flow run) sends to a pool, which may be shared with
    other runners: what its shutdown waits for, or stops, and the environment its
    workers run them in (as it was when the runner started), and the runner's
    `batch_size` option (see _process_sending)."""

    __slots__ = ("_prune_at", "aborted", "batch_size", "context", "runs")

    def __init__(self, warm: bool = False, batch_size: int | None = None) -> None:
        self.batch_size = batch_size
        self.runs: dict[int, TaskRun] = {}
        self._prune_at = 1024
        self.aborted = False
        # Warm workers started before this runner: they take on the environment
        # variables, working directory and sys.argv the runner started with. (Workers
        # of a runner's own start with those of the flow's process then, as always.)
        self.context: tuple[Any, ...] | None = (
            (dict(os.environ), _cwd(), list(sys.argv)) if warm else None
        )

    def add(self, run: TaskRun) -> None:
        runs = self.runs
        if len(runs) >= self._prune_at:
            for key in [k for k, r in runs.items() if r.future.done()]:
                del runs[key]
            self._prune_at = max(1024, 2 * len(runs))  # amortised: runs may all be pending
        runs[run.id] = run

    def wait(self) -> None:
        """Wait until every run of this session has ended."""
        for run in list(self.runs.values()):
            run.future.wait()
        self.runs.clear()


def _cwd() -> str | None:
    try:
        return os.getcwd()
    except OSError:
        return None


class Job:
    """One run on its way through the pool (queued, in a worker, or waiting to retry)."""

    __slots__ = (
        "attempts",
        "blob",
        "cancelled",
        "dispatched",
        "key",
        "limits",
        "mark_running",
        "payload",
        "run",
        "session",
        "shared",
        "timeout",
    )

    def __init__(
        self,
        run: TaskRun,
        key: int,
        blob: bytes,
        payload: tuple[bytes, BufferRef | None],
        timeout: float | None,
        session: Session,
    ) -> None:
        self.run = run
        self.key = key
        self.blob = blob
        self.payload, self.shared = payload
        self.limits = None if run.scope.limiter is None else packed_limits(run)
        self.timeout = timeout
        self.session = session
        self.attempts = Attempts(run)
        self.cancelled = False
        self.dispatched = False
        self.mark_running = True


class WorkerProcess:
    """The parent's side of one worker: its process, socket, and the runs it holds."""

    __slots__ = (
        "context",
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
        self.context: tuple[Any, ...] | None = None  # the Session.context it was last sent
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


def packed_limits(run: TaskRun) -> bytes | None:
    """The `RunCall.limits` of a run whose flow run declares limits, as
    `RunLimits.to_bytes` (`Job` asks only for those): one bytes object per flow run and
    held slots, so that the runs of a batch that share it carry it once (pickle writes
    an object it has written before as a reference to it)."""
    scope = run.scope
    held = run.limits.held if run.limits is not None else _NOTHING
    known = scope.packed_limits
    if held in known:
        return known[held]
    limits = run.run_limits()
    packed = known[held] = None if limits is None else limits.to_bytes()
    return packed


def pickle_arguments(run: TaskRun, lend: bool = False) -> tuple[bytes, BufferRef | None]:
    """The run's arguments for the worker pickled, ``(args, kwargs)``; and where their
    large data is (see _process_shm): removed when the run ends. With `lend` (the
    workers can read this process's memory), large data that is only `bytes` is lent,
    and held until the run ends."""
    args, kwargs = run.args, run.kwargs
    sent = (args, kwargs)
    if not kwargs:
        for value in args:
            if type(value) not in _PLAIN or (type(value) is bytes and len(value) >= LARGE_BYTES):
                break
        else:
            return pickle.dumps(sent, pickle.HIGHEST_PROTOCOL), None
    buffers: list[Any] = []
    try:
        payload = cloudpickle_dumps(sent, buffers)
    except Exception as exc:
        raise _argument_error(run, exc) from exc
    if lend and can_lend(buffers):
        # Held here, not only by the arguments, which the caller may still change.
        run.future.add_done_callback(lambda _: buffers.clear())
        return payload, lend_buffers(buffers)
    ref = share_buffers(buffers, file_prefix(os.getpid(), "d"))
    if ref is not None and ref[0] == "shm":
        path = ref[1]
        run.future.add_done_callback(lambda _: remove(path))
    return payload, ref


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
