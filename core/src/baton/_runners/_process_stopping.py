"""How the `process` runner's pool stops work: the runs of one runner that shut down
without waiting, the whole pool when it is closed, idle, or broken. Part of
`WorkerPool` (see _process_pool), in the dispatcher thread."""

from __future__ import annotations

import heapq
import logging
import os
import pickle
import selectors
import threading
import time
import weakref
from collections.abc import Callable
from queue import Empty, SimpleQueue
from typing import TYPE_CHECKING, Any

from baton import CrashedRun, State
from baton._runners._process_jobs import (
    STOP_GRACE,
    Job,
    Session,
    WorkerProcess,
    end,
    kill_group,
    reap,
)
from baton._runners._worker import STOP
from baton.runners import RunQueue

logger = logging.getLogger("baton")

if TYPE_CHECKING:
    from baton import Task

__all__ = ["PoolStopping"]


class PoolStopping:
    """The stopping half of `WorkerPool`."""

    leases: int
    _queue: RunQueue[Job]
    _timers: list[tuple[float, int, Job]]
    _workers: list[WorkerProcess]
    _incoming: SimpleQueue[Job]
    _aborts: SimpleQueue[Session]
    _cancellable: dict[int, Job]
    _stop: str | None
    _stop_sent: bool
    _stop_deadline: float | None
    _broken: str | None
    _idle_deadline: float | None
    _on_idle: Callable[[Any], bool] | None
    _wake_lock: threading.Lock
    _wake_closed: bool
    _wake_r: int
    _wake_w: int
    _lifeline_r: int
    _lifeline_w: int
    _selector: selectors.BaseSelector
    _finalizers: list[weakref.finalize[Any, Any]]
    _tasks: dict[int, tuple[weakref.ref[Task[..., Any]], int, bytes]]
    _take_incoming: Callable[[], None]
    _kill: Callable[[WorkerProcess, str], None]
    _send: Callable[[WorkerProcess, bytes], None]
    _wake: Callable[..., None]

    def busy(self) -> bool:
        return bool(self._queue or self._timers or any(w.jobs for w in self._workers))

    # -- one runner of a shared pool stops, or none uses it ---------------------------

    def _take_aborts(self) -> None:
        while True:
            try:
                session = self._aborts.get_nowait()
            except Empty:
                return
            self._abort(session)

    def _abort(self, session: Session) -> None:
        """Stop the runs of one runner that shut down without waiting: cancel those
        queued or waiting to retry, kill the workers that hold the others (a worker
        holds the runs of one runner at a time)."""
        self._take_incoming()
        keep: RunQueue[Job] = RunQueue()
        for job in self._queue:
            if job.session is session:
                self._cancel(job)
            elif not job.cancelled:
                keep.append(job, job.run.priority)
        self._queue = keep
        timers = [t for t in self._timers if t[2].session is not session]
        for _, _, job in self._timers:
            if job.session is session:
                self._cancel(job)
        heapq.heapify(timers)
        self._timers = timers
        for worker in self._workers:
            if worker.jobs and worker.jobs[0].session is session:
                worker.kill_reason = "shutdown"
                self._kill(worker, "shutdown")

    def _check_idle(self, now: float) -> None:
        deadline = self._idle_deadline
        if deadline is None or now < deadline or self._stop is not None:
            return
        self._idle_deadline = None
        if self.leases or self.busy() or self._on_idle is None:
            return
        if self._on_idle(self):
            self._stop = "wait"  # no runner holds it: it stops its workers and ends
            self._wake(always=True)

    # -- stopping -----------------------------------------------------------------------

    def _stopped(self) -> bool:
        """Advance the shutdown; True once every worker is gone."""
        if self._stop == "now":
            self._cancel_queued(everything=True)
            for worker in self._workers:
                if worker.kill_reason is None or worker.kill_reason == "stop":
                    worker.kill_reason = "shutdown"
                    kill_group(worker)
            return not self._workers
        self._cancel_queued(everything=False)
        busy = self._queue or self._timers or any(w.jobs for w in self._workers)
        if busy:
            return False
        if not self._stop_sent:
            self._stop_sent = True
            self._stop_deadline = time.monotonic() + STOP_GRACE
            for worker in self._workers:
                if worker.kill_reason is None:
                    worker.kill_reason = "stop"
                    self._send(worker, pickle.dumps((STOP,), pickle.HIGHEST_PROTOCOL))
        elif self._stop_deadline is not None and time.monotonic() >= self._stop_deadline:
            self._stop_deadline = None  # their sockets report the end, soon
            for worker in self._workers:
                kill_group(worker)
        return not self._workers

    def _cancel_queued(self, everything: bool) -> None:
        """Cancel the runs that have not been sent to a worker (with `everything`, also
        those waiting to retry or to be sent again)."""
        if not everything and not any(not j.dispatched for j in self._queue):
            return
        keep: RunQueue[Job] = RunQueue()
        for job in self._queue:
            if job.cancelled:
                continue
            if job.dispatched and not everything:
                keep.append(job, job.run.priority)
                continue
            self._cancel(job)
        self._queue = keep
        if everything:
            for _, _, job in self._timers:
                self._cancel(job)
            self._timers.clear()

    def _cancel(self, job: Job) -> None:
        self._cancellable.pop(job.run.id, None)
        job.cancelled = True
        future = job.run.future
        if not future.cancel() and not future.done():
            job.run.set_state(
                State.cancelled(
                    f"Task run {job.run.name!r} was cancelled: task runner 'process' shut "
                    "down before it could run again."
                )
            )

    def _fail_everything(self, message: str) -> None:
        self._broken = message
        try:
            jobs = list(self._queue) + [t[2] for t in self._timers]
            for worker in list(self._workers):
                jobs.extend(worker.jobs)
                kill_group(worker)
                reap(worker, patient=False)
            self._workers.clear()
            while True:
                try:
                    jobs.append(self._incoming.get_nowait())
                except Empty:
                    break
            for job in jobs:
                if not job.cancelled:
                    end(job, State.crashed(CrashedRun(message), message))
        except BaseException:
            logger.exception("Task runner 'process' could not settle its runs")

    def _release(self) -> None:
        self._stop = self._stop or "now"
        with self._wake_lock:
            self._wake_closed = True
            os.close(self._wake_r)
            os.close(self._wake_w)
        self._selector.close()
        os.close(self._lifeline_w)
        os.close(self._lifeline_r)
        for finalizer in self._finalizers:
            finalizer.detach()
        self._tasks.clear()
        # Runs handed in while the dispatcher stopped must not wait forever.
        while True:
            try:
                job = self._incoming.get_nowait()
            except Empty:
                break
            if not job.cancelled:
                self._cancel(job)
