"""A worker process of the `process` runner, and the wire protocol it shares with the parent.

The parent starts each worker as a fresh interpreter (``python -c`` running `main`),
never by forking itself, so a worker never re-imports the user's ``__main__`` and
never inherits the parent's threads or locks. The two talk over one stream socket
in length-prefixed frames, each a pickled tuple whose first item is its kind:

parent -> worker
    ``(HELLO, sys_path, argv, initializer_blob)`` once, then
    ``(BATCH, new_tasks, forget, items, sys_path)``: tasks the worker has not seen
    yet as ``(key, cloudpickled Task)``, keys of tasks it may forget, runs as
    ``(run_id, name, task_key, attempt, timed, pickled (args, kwargs))``, and the
    parent's sys.path if it changed (None if not);
    ``(STOP,)`` to exit once the batches sent so far are done.
worker -> parent
    ``(READY, pid)``, or ``(INIT_FAILED, traceback_text)`` if the initializer raised;
    ``(STARTED, run_id)`` as a run with a timeout starts; ``(STATE, run_id, state)``
    for a Retrying or Running state between attempts; and one
    ``(RESULT, run_id, pickled_state, failure)`` per run, in the order received.

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
from typing import TYPE_CHECKING, Any

from baton._errors import BatonError

if TYPE_CHECKING:
    import asyncio

    from baton._states import State
    from baton._task import Task

__all__ = ["RemoteTaskError", "WorkerLoadError", "main"]

HELLO, BATCH, STOP = "hello", "batch", "stop"
READY, INIT_FAILED, STARTED, STATE, RESULT = "ready", "init-failed", "started", "state", "result"

PROTOCOL = pickle.HIGHEST_PROTOCOL
_HEADER = struct.Struct("!Q")
_RECV_SIZE = 1 << 18

# True while this worker unpickles what its parent sent: importing a module by
# reference runs its top-level code, and a flow started there means the module
# lacks an `if __name__ == "__main__":` guard (see ProcessRunner.on_start).
loading = False


class RemoteTaskError(BatonError):
    """Stands in for an exception raised in a worker process that could not be pickled
    back to the parent: it keeps the original's type name, message and traceback text.
    """

    def __init__(self, type_name: str, message: str, traceback_text: str) -> None:
        super().__init__(type_name, message, traceback_text)
        self.type_name = type_name
        self.message = message
        self.traceback_text = traceback_text

    def __str__(self) -> str:
        detail = f"{self.type_name}: {self.message}" if self.message else self.type_name
        return f"{detail} (raised in a worker process; the exception itself could not be pickled)"


class RemoteTraceback(Exception):
    """The traceback text of an exception raised in a worker process, attached as the
    `__cause__` of the exception the parent re-creates, so tracebacks show both sides."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f'\n"""\n{self.text}"""'


def dumps(obj: Any) -> bytes:
    """Pickle with the standard pickler, falling back to cloudpickle for what it cannot
    pickle by reference (functions and classes of ``__main__``, closures, lambdas)."""
    try:
        return pickle.dumps(obj, PROTOCOL)
    except Exception:
        return cloudpickle_dumps(obj)


_pickler: Any = None


def cloudpickle_dumps(obj: Any) -> bytes:
    """`cloudpickle.dumps`, keeping the source file names of functions sent by value.

    cloudpickle replaces them with ``<dynamic-code>``; kept, a traceback from a worker
    shows where the task's code is, and its source lines.
    """
    global _pickler
    if _pickler is None:
        _pickler = _filename_keeping_pickler()
    import io

    buffer = io.BytesIO()
    _pickler(buffer, protocol=PROTOCOL).dump(obj)
    return buffer.getvalue()


def _filename_keeping_pickler() -> Any:
    import collections
    import types

    import cloudpickle  # type: ignore[import-untyped]

    code_reduce = getattr(getattr(cloudpickle, "cloudpickle", None), "_code_reduce", None)
    if code_reduce is None:
        return cloudpickle.Pickler

    def reduce_code(code: types.CodeType) -> Any:
        rebuild, args = code_reduce(code)
        return rebuild, tuple(
            code.co_filename if type(arg) is str and arg == "<dynamic-code>" else arg
            for arg in args
        )

    class Pickler(cloudpickle.Pickler):  # type: ignore[misc]
        dispatch_table = collections.ChainMap(
            {types.CodeType: reduce_code}, cloudpickle.Pickler.dispatch_table
        )

    return Pickler


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


class _RunInfo:
    """What the engine and the task's hooks see of a run in the worker."""

    __slots__ = ("id", "name", "task")

    def __init__(self, run_id: int, name: str, task: Task[..., Any]) -> None:
        self.id = run_id
        self.name = name
        self.task = task

    def __repr__(self) -> str:
        return f"<TaskRun {self.name!r}>"


class WorkerLoadError(BatonError):
    """A task or the arguments of a run could not be unpickled in the worker process
    (a module it needs cannot be imported there, for example)."""


def _load(blob: bytes | bytearray) -> Any:
    global loading
    loading = True
    try:
        return pickle.loads(blob)
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
    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.tasks: dict[int, Task[..., Any] | WorkerLoadError] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def serve(self) -> None:
        while True:
            message = pickle.loads(self.channel.receive())
            if message[0] == STOP:
                return
            _, new_tasks, forget, items, path = message
            if path is not None:
                sys.path[:] = path
            for key in forget:
                self.tasks.pop(key, None)
            for key, blob in new_tasks:
                self.tasks[key] = _load_task(blob)
            for item in items:
                self.run(*item)
            del message, items

    def run(
        self, run_id: int, name: str, key: int, attempt: int, timed: bool, payload: bytes
    ) -> None:
        from baton._states import State

        task = self.tasks[key]
        if isinstance(task, WorkerLoadError):
            self._send_result(run_id, name, "?", State.failed(_with_run(task, name)))
            return
        try:
            args, kwargs = _load(payload)
        except BaseException as exc:
            error = WorkerLoadError(
                f"The arguments of task run {name!r} (task {task.name!r}) could not be "
                f"unpickled in the worker process: {type(exc).__name__}: {exc}"
            )
            self._send_result(run_id, name, task.name, State.failed(error))
            return
        info = _RunInfo(run_id, name, task)
        if timed:
            self.channel.send(pickle.dumps((STARTED, run_id), PROTOCOL))
        on_state = self._state_reporter(run_id)
        if task.is_async:
            state = self._run_async(info, args, kwargs, on_state, attempt)
        else:
            from baton._engine import _final_state, _run_hooks, run_sync

            try:
                state = run_sync(
                    info, args, kwargs, on_state, first_attempt=attempt, enforce_timeout=False
                )
            except KeyboardInterrupt as exc:
                # The engine lets a KeyboardInterrupt in the main thread go on, as Ctrl-C;
                # a worker ignores Ctrl-C, so this one the task raised: it crashes the run,
                # as in any other worker, and the worker carries on.
                state = _final_state(exc, info)
                if task.options.on_completion or task.options.on_failure:
                    _run_hooks(info, state)
        del args, kwargs
        self._send_result(run_id, name, task.name, state)

    def _run_async(
        self,
        info: _RunInfo,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        on_state: Callable[[State], None],
        attempt: int,
    ) -> State:
        import asyncio

        from baton._engine import run_async

        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
        return self._loop.run_until_complete(
            run_async(info, args, kwargs, on_state, first_attempt=attempt, enforce_timeout=False)
        )

    def _state_reporter(self, run_id: int) -> Callable[[State], None]:
        def report(state: State) -> None:
            self.channel.send(dumps((STATE, run_id, state)))

        return report

    def _send_result(self, run_id: int, name: str, task_name: str, state: State) -> None:
        from baton._states import State, StateType

        failure: tuple[str, str, str | None, str, str, str] | None = None
        if state.type is not StateType.COMPLETED:
            failure = _describe_failure(state)
        try:
            blob = dumps(state)
        except Exception as exc:
            if state.type is StateType.COMPLETED:
                error: BaseException = pickle.PicklingError(
                    f"Task run {name!r} (task {task_name!r}) returned a value that cannot be "
                    f"pickled ({type(exc).__name__}: {exc}), so it cannot travel back from "
                    "its worker process. Return something picklable (plain data, or a path "
                    "to where the value was written), or run this task on the 'thread' runner."
                )
                state = State.failed(error)
                failure = _describe_failure(state)
            else:
                assert failure is not None
                error = RemoteTaskError(failure[3], failure[4], failure[5])
                state = State(state.type, state.name, state.message, data=error)
            blob = pickle.dumps(state, PROTOCOL)
        self.channel.send(pickle.dumps((RESULT, run_id, blob, failure), PROTOCOL))


def _with_run(error: WorkerLoadError, name: str) -> WorkerLoadError:
    return WorkerLoadError(f"Task run {name!r} could not start. {error}")


def _describe_failure(state: State) -> tuple[str, str, str | None, str, str, str]:
    """(state type, state name, state message, error type, error text, traceback text)."""
    error = state.error
    if error is None:
        return (state.type.value, state.name, state.message, "", "", "")
    try:
        text = str(error)
    except Exception:
        text = f"<{type(error).__name__} whose str() raised>"
    tb = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    return (state.type.value, state.name, state.message, type(error).__qualname__, text, tb)


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
    # Tasks that submit tasks use a thread runner here: there is no flow in a worker.
    os.environ["BATON_TASK_RUNNER"] = "thread"
    channel = Channel(socket.socket(fileno=fd))
    try:
        hello = pickle.loads(channel.receive())
    except EOFError:
        return
    _, sys_path, argv, init_blob = hello
    sys.path[:] = sys_path
    sys.argv[:] = argv  # tasks that read the script's arguments see them
    if init_blob is not None:
        try:
            initializer, initargs = _load(init_blob)
            initializer(*initargs)
        except BaseException:
            channel.send(pickle.dumps((INIT_FAILED, traceback.format_exc()), PROTOCOL))
            sys.exit(1)
    channel.send(pickle.dumps((READY, os.getpid()), PROTOCOL))
    try:
        _Worker(channel).serve()
    except (EOFError, ConnectionError):
        pass  # the parent went away; nothing is left to report to
