"""A worker process of the `process` runner, and the wire protocol it shares with the parent.

The parent starts each worker as a fresh interpreter (``python -c`` running `main`),
never by forking itself, so a worker never re-imports the user's ``__main__`` and
never inherits the parent's threads or locks. The two talk over one stream socket
in length-prefixed frames, each a pickled tuple whose first item is its kind:

parent -> worker
    ``(HELLO, sys_path, argv, initializer_blob, probe)`` once (`probe`: where the
    parent holds bytes to read, see `_process_shm.probe`), then
    ``(BATCH, new_tasks, forget, items, sys_path, context)``: tasks the worker has
    not seen yet as ``(key, cloudpickled Task)``, keys of tasks it may forget, runs as
    ``(run_id, name, task_key, attempt, timed, pickled (args, kwargs), buffers,
    limits)`` (`buffers`: where the arguments' out-of-band data is, see
    `_process_shm`; `limits`: the run's `RunCall.limits` as `RunLimits.to_bytes`, one
    object that the runs of a batch sharing it share in the frame, or None; then the
    run's trace context when OpenTelemetry is on), the
    parent's sys.path if it changed (None if not), and the environment variables,
    working directory and sys.argv of the runner the runs come from, if they changed
    (None if not: a warm worker serves runner after runner);
    ``(STOP,)`` to exit once the batches sent so far are done;
    ``(TAKEN,)`` or ``(RESEND,)`` in answer to a result with lent buffers: copied,
    or not readable here (then send it again, with its buffers in a file).
worker -> parent
    ``(READY, pid, reads_parent)`` (whether it could read the probe), or
    ``(INIT_FAILED, traceback_text)`` if the initializer raised;
    ``(STARTED, run_id)`` as a run with a timeout starts; ``(STATE, run_id, state)``
    for a Retrying or Running state between attempts; and one
    ``(RESULT, run_id, pickled RemoteResult, buffers, seconds)`` per run, in the
    order received (`buffers`: where its out-of-band data is, see `_process_shm`;
    `seconds`: how long the run took here, from loading its arguments to its
    outcome, which sizes the next batches of its task); after one whose buffers
    are lent, the worker waits for the answer before it goes on.

The worker runs one task run at a time and reports each result as soon as it has
it, so the parent always knows which run a worker is running: the oldest one it
has sent and not heard back about.
"""

from __future__ import annotations

import os
import pickle
import signal
import socket
import struct
import sys
import threading
import traceback
from collections import deque
from collections.abc import Callable
from time import perf_counter
from typing import TYPE_CHECKING, Any

from baton import BatonError, State
from baton._runners._process_shm import can_lend, lend_buffers, remove_ref, share_buffers
from baton.runners import (
    RemoteResult,
    RemoteTaskError,
    RemoteTraceback,
    RunCall,
    RunLimits,
    cloudpickle_dumps,
    dumps,
    encode_result,
    run_call,
)

if TYPE_CHECKING:
    from baton import State, Task
    from baton.runners import RemoteResult

__all__ = [
    "RemoteTaskError",
    "RemoteTraceback",
    "WorkerLoadError",
    "cloudpickle_dumps",
    "dumps",
    "main",
]

HELLO, BATCH, STOP, TAKEN, RESEND = "hello", "batch", "stop", "taken", "resend"
READY, INIT_FAILED, STARTED, STATE, RESULT = "ready", "init-failed", "started", "state", "result"

_HEADER = struct.Struct("!Q")
_RECV_SIZE = 1 << 18

# True while this worker unpickles what its parent sent: importing a module by
# reference runs its top-level code, and a flow started there means the module
# lacks an `if __name__ == "__main__":` guard (see ProcessRunner.on_start).
loading = False


class Channel:
    """Length-prefixed frames over a stream socket (blocking, worker side)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buffer = bytearray()
        self._frames: deque[bytearray] = deque()

    def send(self, data: bytes) -> None:
        header = _HEADER.pack(len(data))
        if len(data) < 65536:
            self.sock.sendall(header + data)
        else:
            self.sock.sendall(header)
            self.sock.sendall(data)

    def receive(self) -> bytearray:
        """The next frame, blocking until it is complete."""
        frames = self._frames
        while not frames:
            data = self.sock.recv(_RECV_SIZE)
            if not data:
                raise EOFError
            self._buffer += data
            frames.extend(split_frames(self._buffer))
        return frames.popleft()


def frame(data: bytes) -> bytes:
    return _HEADER.pack(len(data)) + data


def split_frames(buffer: bytearray) -> list[bytearray]:
    """Remove and return the complete frames at the start of `buffer`."""
    frames: list[bytearray] = []
    position = 0
    size = len(buffer)
    header = _HEADER.size
    while size - position >= header:
        (length,) = _HEADER.unpack_from(buffer, position)
        end = position + header + length
        if end > size:
            break
        frames.append(buffer[position + header : end])
        position = end
    if position:
        del buffer[:position]
    return frames


# -- launching a worker (the parent's side) ------------------------------------------


def worker_command(socket_fd: int, lifeline_fd: int) -> list[str]:
    """The command line of a worker: this interpreter, with its flags, running `main`."""
    import subprocess

    import baton

    flags = getattr(subprocess, "_args_from_interpreter_flags", None)
    root = os.path.dirname(os.path.dirname(os.path.abspath(baton.__file__ or "")))
    bootstrap = (
        f"import sys; sys.path.insert(0, {root!r}); from baton._runners._worker import main; main()"
    )
    return [
        sys.executable,
        *(flags() if flags is not None else []),
        "-c",
        bootstrap,
        str(socket_fd),
        str(lifeline_fd),
        str(os.getpid()),
    ]


def parent_sys_path() -> list[str]:
    # '' means the current directory, which may change after the worker starts.
    return [os.path.abspath(entry) if entry == "" else entry for entry in sys.path]


def describe_exit(code: int) -> str:
    """How a process ended, from its return code: an exit code, or a signal by name."""
    if code >= 0:
        return f"exited with code {code}"
    number = -code
    try:
        name = signal.Signals(number).name
    except ValueError:
        name = f"signal {number}"
    description = signal.strsignal(number)
    return f"was killed by signal {name}" + (f" ({description})" if description else "")


# -- the worker -------------------------------------------------------------------------


class WorkerLoadError(BatonError):
    """A task or the arguments of a run could not be unpickled in the worker process
    (a module it needs cannot be imported there, for example)."""


def _load(blob: bytes | bytearray, shared: tuple[Any, ...] | None = None) -> Any:
    global loading
    loading = True
    try:
        if shared is None:
            return pickle.loads(blob)
        from baton._runners._process_shm import open_buffers, take_lent
        from baton._travel import loads

        if shared[0] == "lent":  # the flow's process holds them until the run has ended
            buffers = take_lent(shared, os.getppid())
            if buffers is None:
                raise OSError(
                    "the large bytes among them could not be read from the flow's process"
                )
            return loads(blob, buffers)
        # The flow's process removes the file when the run ends (it may be sent again).
        return loads(blob, open_buffers(shared, keep_file=True))
    finally:
        loading = False


def _load_task(blob: bytes | bytearray) -> Task[..., Any] | WorkerLoadError:
    try:
        return _load(blob)  # type: ignore[no-any-return]
    except BaseException as exc:
        name = getattr(exc, "name", None)
        hint = (
            f" The worker imports module {name!r} by name, with the parent's sys.path: make "
            "it importable there, or have it sent by value with "
            f"cloudpickle.register_pickle_by_value({name})."
            if isinstance(exc, ImportError) and name
            else ""
        )
        detail = f"{type(exc).__name__}: {exc}".rstrip(".")
        return WorkerLoadError(
            f"The task could not be loaded in the worker process: {detail}.{hint}"
        )


class _Worker:
    def __init__(self, channel: Channel, parent_pid: int) -> None:
        self.channel = channel
        self.tasks: dict[int, Task[..., Any] | WorkerLoadError] = {}
        from baton._runners._process_shm import file_prefix

        self.prefix = file_prefix(parent_pid, str(os.getpid()))
        self.lending = True  # large bytes results are lent, not written to a file
        self.later: deque[tuple[Any, ...]] = deque()

    def _answer(self) -> str:
        """The parent's answer to a result with lent buffers (TAKEN or RESEND); what
        it sent before that waits in `self.later`."""
        while True:
            message = pickle.loads(self.channel.receive())
            if message[0] in (TAKEN, RESEND):
                return message[0]  # type: ignore[no-any-return]
            self.later.append(message)

    def serve(self) -> None:
        later = self.later
        while True:
            message = later.popleft() if later else pickle.loads(self.channel.receive())
            if message[0] == STOP:
                return
            _, new_tasks, forget, items, path, context = message
            if path is not None:
                sys.path[:] = path
            if context is not None:
                _take_context(*context)
            for key in forget:
                self.tasks.pop(key, None)
            for key, blob in new_tasks:
                self.tasks[key] = _load_task(blob)
            for item in items:
                self.run(*item)
            del message, items

    def run(
        self,
        run_id: int,
        name: str,
        key: int,
        attempt: int,
        timed: bool,
        payload: bytes,
        shared: tuple[Any, ...] | None,
        limits: bytes | None,
        trace_context: dict[str, str] | None = None,
    ) -> None:
        started = perf_counter()
        task = self.tasks[key]
        if isinstance(task, WorkerLoadError):
            result = RemoteResult(State.failed(_with_run(task, name)), attempt=attempt)
            self._send_result(run_id, result, "?", name, perf_counter() - started)
            return
        try:
            loaded = _load(payload, shared)
        except BaseException as exc:
            error = WorkerLoadError(
                f"The arguments of task run {name!r} (task {task.name!r}) could not be "
                f"unpickled in the worker process: {type(exc).__name__}: {exc}"
            )
            result = RemoteResult(State.failed(error), attempt=attempt)
            self._send_result(run_id, result, task.name, name, perf_counter() - started)
            return
        call = RunCall(
            task,
            run_id,
            name,
            loaded[0],
            loaded[1],
            trace_context=trace_context,
            limits=None if limits is None else RunLimits.from_bytes(limits),
        )
        del loaded
        result = run_call(
            call, attempt=attempt, timeout="runner", on_state=self._state_reporter(run_id, timed)
        )
        seconds = perf_counter() - started
        del call
        self._send_result(run_id, result, task.name, name, seconds)

    def _state_reporter(self, run_id: int, timed: bool) -> Callable[[State], None]:
        started = [False]

        def report(state: State) -> None:
            if not started[0]:
                # The first report is RUNNING as the run starts: the parent already
                # marked it running when it sent it, and needs to hear of it only to
                # start the clock of its timeout.
                started[0] = True
                if timed:
                    self.channel.send(pickle.dumps((STARTED, run_id), pickle.HIGHEST_PROTOCOL))
                return
            self.channel.send(dumps((STATE, run_id, state)))

        return report

    def _send_result(
        self, run_id: int, result: RemoteResult, task_name: str, run_name: str, seconds: float
    ) -> None:
        buffers: list[Any] = []
        blob = encode_result(result, task_name, run_name, buffers)
        del result
        if self.lending and can_lend(buffers):
            # The parent copies them out of this process's memory, then answers.
            message = (RESULT, run_id, blob, lend_buffers(buffers), seconds)
            self.channel.send(pickle.dumps(message, pickle.HIGHEST_PROTOCOL))
            if self._answer() == TAKEN:
                return
            self.lending = False  # it may not read this process: the file from now on
        ref = share_buffers(buffers, self.prefix)
        del buffers
        try:
            self.channel.send(
                pickle.dumps((RESULT, run_id, blob, ref, seconds), pickle.HIGHEST_PROTOCOL)
            )
        except BaseException:
            remove_ref(ref)
            raise


_parent_environ: dict[str, str] = {}  # the parent's environment, as last heard of


def _take_context(environ: dict[str, str], cwd: str | None, argv: list[str]) -> None:
    """Take on the environment of the runner whose runs come next: the variables that
    changed in the parent since (what the initializer or a task set stays, unless the
    parent changed it too), its working directory and sys.argv."""
    global _parent_environ
    current = os.environ
    before = _parent_environ
    for name in before:
        if name not in environ and name != "BATON_TASK_RUNNER":
            current.pop(name, None)
    for name, value in environ.items():
        if before.get(name) != value and name != "BATON_TASK_RUNNER":
            current[name] = value
    _parent_environ = environ
    if cwd is not None:
        try:
            os.chdir(cwd)
        except OSError:
            pass
    sys.argv[:] = argv


def _with_run(error: WorkerLoadError, name: str) -> WorkerLoadError:
    return WorkerLoadError(f"Task run {name!r} could not start. {error}")


def _watch_parent(lifeline: int) -> None:
    """Exit as soon as the parent process is gone (its end of the lifeline closes)."""
    try:
        while os.read(lifeline, 1):
            pass
    except OSError:
        pass
    os._exit(70)


def _die_with_parent_thread() -> None:
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
        except Exception:
            pass


def main() -> None:
    """Serve the parent: ``python -c "...; main()" SOCKET_FD LIFELINE_FD PARENT_PID``."""
    # The parent decides what Ctrl-C means; workers also run in their own session.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    fd, lifeline, parent_pid = (int(arg) for arg in sys.argv[1:4])
    _die_with_parent_thread()
    if os.getppid() != parent_pid:
        os._exit(70)
    os.set_inheritable(fd, False)
    os.set_inheritable(lifeline, False)
    threading.Thread(target=_watch_parent, args=(lifeline,), daemon=True).start()
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(line_buffering=True)
    global _parent_environ
    _parent_environ = dict(os.environ)
    # Tasks that submit tasks use a thread runner here: there is no flow in a worker.
    os.environ["BATON_TASK_RUNNER"] = "thread"
    channel = Channel(socket.socket(fileno=fd))
    try:
        hello = pickle.loads(channel.receive())
    except EOFError:
        return
    _, sys_path, argv, init_blob, where = hello
    sys.path[:] = sys_path
    sys.argv[:] = argv  # tasks that read the script's arguments see them
    if init_blob is not None:
        try:
            initializer, initargs = _load(init_blob)
            initializer(*initargs)
        except BaseException:
            channel.send(
                pickle.dumps((INIT_FAILED, traceback.format_exc()), pickle.HIGHEST_PROTOCOL)
            )
            sys.exit(1)
    from baton._runners._process_shm import can_read

    ready = (READY, os.getpid(), can_read(parent_pid, where))
    channel.send(pickle.dumps(ready, pickle.HIGHEST_PROTOCOL))
    try:
        _Worker(channel, parent_pid).serve()
    except (EOFError, ConnectionError):
        pass  # the parent went away; nothing is left to report to
