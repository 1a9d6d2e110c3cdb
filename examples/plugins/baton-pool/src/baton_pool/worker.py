"""One worker process of the `pool` runner: it serves runs, one at a time, over a pipe.

Messages, each pickled (``Connection.send``):

parent -> worker
    ``(attempt, run_name, payload)``: run the pickled `RunCall` in `payload` as
    attempt number `attempt`; ``None``: exit.
worker -> parent
    ``("state", state)`` as an attempt starts (RUNNING); ``("result", blob)`` once it
    ends, `blob` from `encode_result`.
"""

from __future__ import annotations

import pickle
import signal
from multiprocessing.connection import Connection

from baton import State
from baton.runners import RemoteResult, RunCall, encode_result, run_call

__all__ = ["serve"]


def serve(conn: Connection) -> None:
    """The worker process's main function: serve runs until told to stop."""
    # Ctrl-C reaches the whole process group; the flow's process decides what it means.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        try:
            message = conn.recv()
        except EOFError:  # the flow's process is gone
            return
        if message is None:
            return
        attempt, name, payload = message
        conn.send(("result", _run(conn, attempt, name, payload)))


def _run(conn: Connection, attempt: int, name: str, payload: bytes) -> bytes:
    try:
        call: RunCall = pickle.loads(payload)
    except Exception as exc:  # a module the task needs cannot be imported here
        error = RuntimeError(
            f"Task run {name!r} could not be loaded in a worker process of the 'pool' "
            f"runner ({type(exc).__name__}: {exc}). Make the modules it needs importable "
            "there (the worker has the flow's sys.path)."
        )
        return encode_result(RemoteResult(State.failed(error), attempt=attempt), "?", name)

    def report(state: State) -> None:
        conn.send(("state", state))

    # One attempt, run directly: the parent retries, and enforces timeouts by killing
    # this process.
    result = run_call(call, attempt=attempt, retries="runner", timeout="runner", on_state=report)
    return encode_result(result, call.task.name, call.name)
