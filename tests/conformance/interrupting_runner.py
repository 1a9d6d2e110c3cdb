"""A runner that can stop a run that has started: a thread per run, interrupted on cancel.

None of the runners that ship with Baton declares CANCEL_RUNNING, so this one exists
to run the kit's tests of that capability. A sync run is stopped by raising an
exception in its thread (pure-Python code stops at its next bytecode), an async run
by cancelling its asyncio task.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import threading
from typing import final

from baton import Capability, State, StateType, TaskRun, TaskRunner

__all__ = ["InterruptingRunner", "RunStopped"]


class RunStopped(BaseException):
    """Raised inside the thread of a sync run that `cancel` stops."""


@final
class InterruptingRunner(TaskRunner):
    name = "interrupting"
    capabilities = frozenset({Capability.CANCEL_RUNNING, Capability.NESTED, Capability.ASYNC})

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._threads: dict[int, threading.Thread] = {}
        self._async: dict[int, concurrent.futures.Future[State]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None

    def on_start(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(target=loop.run_forever, daemon=True)
        self._loop_thread.start()

    def on_shutdown(self, wait: bool) -> None:
        if wait:
            while True:
                with self._lock:
                    threads = list(self._threads.values())
                    pending = list(self._async.values())
                if not threads and not pending:
                    break
                for thread in threads:
                    thread.join()
                concurrent.futures.wait(pending)
        loop, thread = self._loop, self._loop_thread
        if loop is not None and thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()

    def submit(self, run: TaskRun) -> None:
        loop = self._loop
        if loop is None or self.closed:
            from baton import RunnerClosedError

            raise RunnerClosedError(f"Task runner 'interrupting' is {self._status}.")
        if run.task.is_async:
            with self._lock:
                future = asyncio.run_coroutine_threadsafe(run.execute_async(), loop)
                self._async[run.id] = future
            future.add_done_callback(lambda _: self._forget(run.id))
            return
        thread = threading.Thread(target=self._serve, args=(run,), daemon=True)
        with self._lock:
            self._threads[run.id] = thread
        thread.start()

    def _serve(self, run: TaskRun) -> None:
        try:
            run.execute()
        except RunStopped:
            pass  # stopped by cancel(), which already ended the run CANCELLED
        finally:
            self._forget(run.id)

    def _forget(self, run_id: int) -> None:
        with self._lock:
            self._threads.pop(run_id, None)
            self._async.pop(run_id, None)

    def cancel(self, run: TaskRun) -> bool:
        if run.state.type is not StateType.RUNNING:
            return False  # not started: the core has dropped it already
        with self._lock:
            thread = self._threads.get(run.id)
            future = self._async.get(run.id)
        if thread is None and future is None:
            return False
        run.set_state(State.cancelled(f"Task run {run.name!r} was cancelled while running."))
        if future is not None:
            future.cancel()
        elif thread is not None and thread.ident is not None:
            ctypes.pythonapi.PyThreadState_SetAsyncExc(
                ctypes.c_ulong(thread.ident), ctypes.py_object(RunStopped)
            )
        return True
