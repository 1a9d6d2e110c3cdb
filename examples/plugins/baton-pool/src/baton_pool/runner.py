"""The `pool` runner: task runs on a small pool of worker processes.

Each worker is a `multiprocessing` process (the ``spawn`` start method) that serves
one run at a time over its own pipe (see `baton_pool.worker`). One dispatcher thread
in the flow's process owns the workers: it sends queued runs to idle workers, and
waits on every pipe and every process sentinel at once
(`multiprocessing.connection.wait`). So it hears both what a worker reports and that
a worker died, and it always knows which run that worker held. Other threads only
hand it work: `submit` and retry timers put runs in the queue, deadlines report
that they expired, and each wakes the dispatcher through a pipe of its own.

Everything it uses is public: `baton` and `baton.runners`.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from multiprocessing import get_context
from multiprocessing.connection import wait
from typing import TYPE_CHECKING, Any, final

from baton import (
    Capability,
    CrashedRun,
    InvalidOptionsError,
    RunnerClosedError,
    State,
    StateType,
    TaskRunner,
)
from baton.runners import (
    Attempts,
    Deadlines,
    Retry,
    decode_result,
    dumps,
    timed_out,
    unpicklable_arguments,
    worker_lost,
)

from baton_pool.worker import serve

if TYPE_CHECKING:
    from multiprocessing.context import SpawnContext, SpawnProcess

    from baton import TaskRun

__all__ = ["PoolRunner"]

logger = logging.getLogger("baton_pool")

_STOP_GRACE = 10.0  # seconds a worker gets to exit when told to, before it is killed


@final
class PoolRunner(TaskRunner):
    """Runs task runs in a pool of worker processes, with hard timeouts and crash
    detection. `max_workers` defaults to the number of CPUs (at least 2).

    Workers start with ``multiprocessing``'s ``spawn`` method, so a script that runs
    a flow on this runner needs an ``if __name__ == "__main__":`` guard.

    >>> from baton import flow, task
    >>> @task
    ... def square(x):
    ...     return x * x
    >>> @flow(task_runner=PoolRunner(max_workers=2))
    ... def squares(n):
    ...     return square.map(range(n)).result()
    >>> squares(4)  # doctest: +SKIP
    [0, 1, 4, 9]
    """

    name = "pool"
    capabilities = frozenset(
        {
            Capability.PROCESSES,
            Capability.NESTED,
            Capability.ASYNC,
            Capability.HARD_TIMEOUTS,
            Capability.CRASH_DETECTION,
        }
    )

    def __init__(self, max_workers: int | None = None) -> None:
        if max_workers is not None and (
            isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1
        ):
            raise InvalidOptionsError(
                "Invalid options for task runner 'pool':\n  max_workers: must be a whole "
                f"number >= 1 (got {max_workers!r})"
            )
        self.max_workers: int = max_workers or max(2, os.cpu_count() or 1)
        self._pool: _Pool | None = None

    def on_start(self) -> None:
        self._pool = _Pool(self.max_workers)

    def on_shutdown(self, wait: bool) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close(wait)

    def submit(self, run: TaskRun) -> None:
        pool = self._pool
        if pool is None:
            state = "has been shut down" if self.closed else "is not started"
            raise RunnerClosedError(f"Task runner 'pool' {state}.")
        try:
            payload = dumps(run.call)
        except Exception as exc:
            raise unpicklable_arguments(run, exc, "a worker process of the 'pool' runner") from exc
        pool.submit(run, payload)

    def cancel(self, run: TaskRun) -> bool:
        if not run.future.done():
            return run.future.cancel()  # called directly: cancel() calls back here
        pool = self._pool
        return pool is not None and pool.cancel(run)

    def __repr__(self) -> str:
        status = "started" if self.started else "closed" if self.closed else "new"
        return f"<PoolRunner max_workers={self.max_workers} {status}>"


@final
class _Job:
    """One run on its way through the pool: queued, on a worker, or waiting to retry."""

    __slots__ = ("attempt", "payload", "run")

    def __init__(self, run: TaskRun, payload: bytes) -> None:
        self.run = run
        self.payload = payload  # the pickled RunCall
        self.attempt = 1


@final
class _Worker:
    """One worker process, the parent's end of its pipe, and the run it holds."""

    __slots__ = ("conn", "job", "pid", "process")

    def __init__(self, context: SpawnContext) -> None:
        self.conn, child = context.Pipe()
        self.process: SpawnProcess = context.Process(
            target=serve, args=(child,), name="baton-pool-worker", daemon=True
        )
        self.process.start()
        child.close()
        self.pid: int = self.process.pid or 0
        self.job: _Job | None = None


@final
class _Pool:
    def __init__(self, size: int) -> None:
        self._size = size
        self._context = get_context("spawn")
        self._workers: list[_Worker] = []  # only the dispatcher thread touches these
        self._lock = threading.Lock()  # guards what follows
        self._queue: dict[int, _Job] = {}  # run id -> job waiting for a worker, in order
        self._jobs: dict[int, _Job] = {}  # run id -> every job whose run is not final
        self._expired: list[tuple[_Worker, _Job, int]] = []
        self._stop: str | None = None  # "wait" or "now" once closing
        self._woken = False
        self._wake_r, self._wake_w = self._context.Pipe(duplex=False)
        self._deadlines = Deadlines("baton-pool-deadlines")
        self._thread = threading.Thread(target=self._serve, name="baton-pool", daemon=True)
        self._thread.start()

    # -- any thread ----------------------------------------------------------------------

    def submit(self, run: TaskRun, payload: bytes) -> None:
        job = _Job(run, payload)
        with self._lock:
            if self._stop is not None:
                raise RunnerClosedError("Task runner 'pool' has been shut down.")
            self._jobs[run.id] = job
        self._enqueue(job)

    def cancel(self, run: TaskRun) -> bool:
        """Drop a run that waits for a worker (its future is already CANCELLED)."""
        with self._lock:
            if self._queue.pop(run.id, None) is None:
                return False
            del self._jobs[run.id]
        self._wake()  # a shutdown may be waiting for this run
        return True

    def close(self, wait: bool) -> None:
        with self._lock:
            self._stop = "wait" if wait and self._stop != "now" else "now"
        self._wake()
        if threading.current_thread() is self._thread:
            return  # called from a callback of a run: the dispatcher ends by itself
        try:
            self._thread.join()
        except BaseException:  # Ctrl-C while waiting: stop now
            with self._lock:
                self._stop = "now"
            self._wake()
            self._thread.join()
            raise

    def _enqueue(self, job: _Job) -> None:
        with self._lock:
            self._queue[job.run.id] = job
        self._wake()

    def _wake(self) -> None:
        with self._lock:
            if self._woken:
                return  # a wake-up is on its way already
            self._woken = True
        try:
            self._wake_w.send_bytes(b"")
        except OSError:
            pass  # the dispatcher has ended

    # -- the dispatcher thread -----------------------------------------------------------

    def _serve(self) -> None:
        try:
            while self._step():
                pass
        except BaseException:
            logger.exception("The dispatcher of task runner 'pool' failed")
            self._stop = "now"
        finally:
            self._release()

    def _step(self) -> bool:
        """Handle what happened since the last step; False once the pool is done."""
        with self._lock:
            self._woken = False  # changes from here on send a new wake-up
            stop = self._stop
            expired, self._expired = self._expired, []
            idle = not self._jobs
        for worker, job, attempt in expired:
            self._expire(worker, job, attempt)
        if stop == "now" or (stop == "wait" and idle):
            return False
        self._assign()
        owners: dict[Any, _Worker | None] = {self._wake_r: None}
        for worker in self._workers:
            owners[worker.conn] = worker
            owners[worker.process.sentinel] = worker
        for ready in wait(list(owners)):
            owner = owners[ready]
            if owner is None:
                while self._wake_r.poll():
                    self._wake_r.recv_bytes()
            elif owner in self._workers and not (ready is owner.conn and self._read(owner)):
                self._lost(owner)  # its pipe closed, or its process sentinel fired
        return True

    def _assign(self) -> None:
        """Send queued runs to idle workers, starting workers up to the pool's size."""
        while True:
            worker = next((w for w in self._workers if w.job is None), None)
            if worker is None and len(self._workers) >= self._size:
                return
            job = self._next_job()
            if job is None:
                return
            if worker is None:
                worker = _Worker(self._context)
                self._workers.append(worker)
            worker.job = job
            try:
                worker.conn.send((job.attempt, job.run.name, job.payload))
            except OSError:
                pass  # the worker died: its sentinel says so next, and the attempt crashes

    def _next_job(self) -> _Job | None:
        while True:
            with self._lock:
                if not self._queue:
                    return None
                job = self._queue.pop(next(iter(self._queue)))
            if job.run.set_running():
                return job
            self._forget(job)  # cancelled while it waited

    def _read(self, worker: _Worker) -> bool:
        """Handle one message from `worker`; False if its pipe has closed."""
        try:
            kind, value = worker.conn.recv()
        except (EOFError, OSError):
            return False
        job = worker.job
        assert job is not None, "a worker reported on a run it was not sent"
        if kind == "state":
            self._on_state(worker, job, value)
        else:
            worker.job = None
            self._deadlines.cancel(worker)
            result = decode_result(value, job.run)
            if result.retry is None:
                self._forget(job)
                job.run.finish(result)
            else:
                job.run.set_state(result.retry.state)
                self._retry(job, result.retry)
        return True

    def _on_state(self, worker: _Worker, job: _Job, state: State) -> None:
        if state.type is not StateType.RUNNING:
            job.run.set_state(state)
            return
        # The attempt starts: its clock starts now (retry delays do not count).
        seconds = job.run.task.options.timeout_seconds
        if seconds is not None:
            attempt = job.attempt

            def expire() -> None:  # in the deadlines' thread: hand it to the dispatcher
                with self._lock:
                    self._expired.append((worker, job, attempt))
                self._wake()

            self._deadlines.start(worker, seconds, expire)

    def _expire(self, worker: _Worker, job: _Job, attempt: int) -> None:
        """A run's attempt outlived its timeout: kill its worker, end the attempt."""
        if worker not in self._workers or worker.job is not job or job.attempt != attempt:
            return  # the attempt ended first
        self._remove(worker, kill=True)
        seconds = job.run.task.options.timeout_seconds or 0.0
        detail = f"its worker process (pid {worker.pid}) was killed"
        self._end_attempt(job, timed_out(job.run.name, seconds, detail))

    def _lost(self, worker: _Worker) -> None:
        """`worker`'s process ended by itself: crash the run it held."""
        try:
            while worker.conn.poll() and self._read(worker):
                pass  # what it sent before it died comes first
        except OSError:
            pass
        job = worker.job
        code = self._remove(worker, kill=True)
        if job is not None:
            message = (
                f"Task run {job.run.name!r} crashed: its worker process (pid {worker.pid}) "
                f"{_how_it_ended(code)} while running it."
            )
            self._end_attempt(job, worker_lost(message))

    def _remove(self, worker: _Worker, kill: bool) -> int | None:
        """Stop `worker` for good; its exit code."""
        self._workers.remove(worker)
        self._deadlines.cancel(worker)
        if kill:
            worker.process.kill()
        worker.process.join()
        code = worker.process.exitcode
        worker.process.close()
        worker.conn.close()
        return code

    def _end_attempt(self, job: _Job, state: State) -> None:
        """An attempt ended outside the worker's engine: retry it, or end the run."""
        attempts = Attempts(job.run, first=job.attempt)  # the count goes on
        retry = attempts.after(state) if self._stop != "now" else None
        if retry is None:
            self._forget(job)
            job.run.set_state(attempts.finish(state))
        else:
            job.run.set_state(retry.state)
            self._retry(job, retry)

    def _retry(self, job: _Job, retry: Retry) -> None:
        job.attempt = retry.attempt
        if retry.delay > 0:
            self._deadlines.start(("retry", job.run.id), retry.delay, lambda: self._enqueue(job))
        else:
            self._enqueue(job)

    def _forget(self, job: _Job) -> None:
        with self._lock:
            self._jobs.pop(job.run.id, None)

    def _release(self) -> None:
        """Stop every worker (politely after a shutdown that waited) and end every run
        left: those on a worker CRASHED, the others CANCELLED."""
        self._deadlines.close()
        with self._lock:
            polite = self._stop == "wait"
            self._stop = "now"
            left = list(self._jobs.values())
            self._jobs.clear()
            self._queue.clear()
        holding = {id(w.job): w.pid for w in self._workers if w.job is not None}
        for worker in self._workers:
            try:
                if polite:
                    worker.conn.send(None)
                else:
                    worker.process.kill()
            except OSError:
                pass
        for worker in self._workers:
            worker.process.join(_STOP_GRACE)
            if worker.process.exitcode is None:
                worker.process.kill()
                worker.process.join()
            worker.conn.close()
        self._workers.clear()
        for job in left:
            pid = holding.get(id(job))
            if pid is not None:
                message = (
                    f"Task run {job.run.name!r} was stopped: task runner 'pool' shut down "
                    f"without waiting, and its worker process (pid {pid}) was killed."
                )
                job.run.set_state(State.crashed(CrashedRun(message), message))
            else:
                job.run.set_state(
                    State.cancelled(
                        f"Task run {job.run.name!r} was cancelled: task runner 'pool' shut "
                        "down before it could run."
                    )
                )
        self._wake_r.close()
        self._wake_w.close()


def _how_it_ended(code: int | None) -> str:
    if code is None:
        return "ended"
    if code >= 0:
        return f"exited with code {code}"
    try:
        return f"was killed by signal {signal.Signals(-code).name}"
    except ValueError:
        return f"was killed by signal {-code}"
