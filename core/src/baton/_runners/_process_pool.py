"""The parent's side of the `process` runner: worker processes and the dispatcher
thread that owns them.

The dispatcher keeps one socket per worker and knows which runs each worker holds
(sent, not yet reported, in order), so a worker's death or a run's deadline maps
to exactly one run. It waits on every socket at once, sends batches to workers
with room, reads reports, and keeps the timers (deadlines, retry delays).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import pickle
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from queue import Empty, SimpleQueue
from typing import TYPE_CHECKING, Any

from baton import CrashedRun, RunnerClosedError, State, StateType
from baton._runners._process_jobs import (
    STOP_GRACE,
    Job,
    Session,
    WorkerProcess,
    end,
    kill_group,
    pickle_arguments,
    pickle_task,
    reap,
    shutdown_state,
)
from baton._runners._process_sending import PoolSending, new_sizer
from baton._runners._process_shm import (
    open_buffers,
    probe,
    remove_ref,
    remove_worker_files,
    take_lent,
)
from baton._runners._process_stopping import PoolStopping
from baton._runners._worker import (
    HELLO,
    INIT_FAILED,
    READY,
    RESEND,
    RESULT,
    STARTED,
    STATE,
    TAKEN,
    frame,
    parent_sys_path,
    split_frames,
    worker_command,
)
from baton.runners import RemoteResult, RunQueue, decode_result, timed_out, worker_lost

if TYPE_CHECKING:
    from collections.abc import Callable

    from baton import Task, TaskRun

__all__ = ["WorkerPool"]

logger = logging.getLogger("baton")

_RECV_SIZE = 1 << 18
_LIVENESS_POLL = 1.0  # seconds between checks that busy workers are alive
_START_FAILURES = 3  # workers in a row that die before they are ready: give up


_live_pools: weakref.WeakSet[WorkerPool] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # A process forked from the flow's (say, by multiprocessing) must not hold the
    # pools' lifelines or sockets: workers would outlive the flow's process for as
    # long as it lives. The pools are of no use there anyway (no dispatcher thread).
    for pool in list(_live_pools):
        pool.forget_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _forget_task(pool_ref: weakref.ref[WorkerPool], task_id: int, key: int) -> None:
    pool = pool_ref()
    if pool is not None:
        pool.task_gone(task_id, key)


class WorkerPool(PoolSending, PoolStopping):
    """Worker processes plus one dispatcher thread that owns them.

    The dispatcher sends runs to workers, reads their reports, and watches each
    worker's socket, so a death or a deadline maps to exactly the run that worker
    holds. Other threads only hand it runs (through a queue and a wake-up pipe).
    """

    def __init__(
        self,
        max_workers: int,
        init_blob: bytes | None,
        idle_timeout: float | None = None,
        on_idle: Callable[[WorkerPool], bool] | None = None,
    ) -> None:
        self.max_workers = max_workers
        self._init_blob = init_blob
        # A pool shared by runner after runner (see _process_shared): how many runners
        # use it now, and when it stops its workers once none does.
        self.leases = 0
        self.retired = False
        self._idle_timeout = idle_timeout
        self._on_idle = on_idle
        self._idle_deadline: float | None = None
        self._aborts: SimpleQueue[Session] = SimpleQueue()
        self._incoming: SimpleQueue[Job] = SimpleQueue()
        self._cancellable: dict[int, Job] = {}  # run id -> job not yet sent to a worker
        self._awake = False
        self._wake_lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._wake_closed = False
        # Workers read the other end and exit when this process is gone.
        self._lifeline_r, self._lifeline_w = os.pipe()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._queue: RunQueue[Job] = RunQueue()  # by priority, FIFO within one
        self.sizer = new_sizer()  # how many runs go in one message (see _process_sending)
        self._measured: dict[int, list[float]] = {}
        self._timers: list[tuple[float, int, Job]] = []
        self._sequence = itertools.count()
        self._workers: list[WorkerProcess] = []
        self._stop: str | None = None  # None, "wait" or "now"
        self._stop_sent = False
        self._stop_deadline: float | None = None
        self._broken: str | None = None
        self._start_failures = 0
        self.lend_arguments = False  # whether the workers can read this process's memory
        self._next_poll = 0.0
        self._tasks: dict[int, tuple[weakref.ref[Task[..., Any]], int, bytes]] = {}
        self._task_keys = itertools.count(1)
        self._task_lock = threading.Lock()
        self._finalizers: list[weakref.finalize[Any, Any]] = []
        self._forgotten: SimpleQueue[int] = SimpleQueue()
        self._thread = threading.Thread(
            target=self._serve, name="baton-process-dispatcher", daemon=True
        )
        self._thread.start()
        _live_pools.add(self)

    # -- any thread -------------------------------------------------------------------

    def submit(self, run: TaskRun, session: Session) -> None:
        if self._stop is not None:
            raise RunnerClosedError("Task runner 'process' has been shut down.")
        broken = self._broken
        if broken is not None:
            run.set_state(State.crashed(CrashedRun(broken), broken))
            return
        key, blob = self._task_entry(run.task)
        payload = pickle_arguments(run, self.lend_arguments)
        job = Job(run, key, blob, payload, run.task.options.timeout_seconds, session)
        session.add(run)
        self._cancellable[run.id] = job
        self._incoming.put(job)
        self._wake()

    def cancel(self, run: TaskRun) -> bool:
        job = self._cancellable.pop(run.id, None)
        if job is None:
            return False
        job.cancelled = True
        return True

    def open_session(self, warm: bool = False, batch_size: int | None = None) -> Session:
        """A new runner uses this pool (for a shared pool, `warm`: the caller counts
        `leases`, and the workers take on the runner's environment), with its
        `batch_size` option."""
        self._idle_deadline = None
        return Session(warm, batch_size)

    def close_session(self, session: Session, wait: bool) -> None:
        """A runner using this pool shuts down: wait for its runs to end, or (without
        `wait`) cancel those not started and kill the workers running the others.
        The pool's other runs carry on; killed workers are replaced when needed."""
        if not wait and self._stop is None:
            session.aborted = True
            self._aborts.put(session)
            self._wake(always=True)
        session.wait()

    def became_idle(self) -> None:
        """No runner uses this pool any more: its workers stop after the idle timeout."""
        if self._idle_timeout is not None:
            self._idle_deadline = time.monotonic() + self._idle_timeout
            self._wake(always=True)

    def close(self, wait: bool) -> None:
        self._stop = "wait" if wait and self._stop != "now" else "now"
        self._wake(always=True)
        if threading.current_thread() is self._thread:
            return
        try:
            self._thread.join()
        except BaseException:
            self._stop = "now"
            self._wake(always=True)
            self._thread.join(STOP_GRACE)
            raise

    def forget_after_fork(self) -> None:
        self._stop = "now"
        self._wake_lock = threading.Lock()  # another thread may have held it at the fork
        self._wake_closed = True
        for fd in (self._lifeline_w, self._lifeline_r, self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        for worker in self._workers:
            worker.sock.close()

    def task_gone(self, task_id: int, key: int) -> None:
        entry = self._tasks.get(task_id)
        if entry is not None and entry[1] == key:
            del self._tasks[task_id]
        self._forgotten.put(key)

    def _task_entry(self, task: Task[..., Any]) -> tuple[int, bytes]:
        entry = self._tasks.get(id(task))
        if entry is not None and entry[0]() is task:
            return entry[1], entry[2]
        with self._task_lock:
            entry = self._tasks.get(id(task))
            if entry is not None and entry[0]() is task:
                return entry[1], entry[2]
            blob = pickle_task(task)
            key = next(self._task_keys)
            self._tasks[id(task)] = (weakref.ref(task), key, blob)
            self._finalizers.append(
                weakref.finalize(task, _forget_task, weakref.ref(self), id(task), key)
            )
        return key, blob

    def _wake(self, always: bool = False) -> None:
        if always or not self._awake:
            self._awake = True
            with self._wake_lock:
                if not self._wake_closed:
                    try:
                        os.write(self._wake_w, b"\0")
                    except OSError:
                        pass  # the pipe is full: the dispatcher is awake anyway

    # -- the dispatcher thread --------------------------------------------------------

    def _serve(self) -> None:
        try:
            self._loop()
        except BaseException as exc:
            logger.exception("The 'process' task runner's dispatcher failed")
            self._fail_everything(
                f"Task runner 'process' failed internally ({type(exc).__name__}: {exc})."
            )
        finally:
            self._release()

    def _loop(self) -> None:
        selector = self._selector
        while True:
            self._take_incoming()
            self._forget_tasks()
            self._take_aborts()
            if self._stop is not None and self._stopped():
                return
            now = time.monotonic()
            self._fire_timers(now)
            self._check_idle(now)
            self._assign()
            for key, events in selector.select(self._wait_time(now)):
                worker: WorkerProcess | None = key.data
                if worker is None:
                    try:
                        while os.read(self._wake_r, 4096):
                            pass
                    except BlockingIOError:
                        pass
                    # Cleared after draining, and before the incoming queue is read
                    # (next, at the top of the loop): a run handed in after this line
                    # writes a new byte, one handed in before it is in the queue.
                    self._awake = False
                    continue
                if events & selectors.EVENT_READ:
                    self._read(worker)
                if events & selectors.EVENT_WRITE and worker.sock.fileno() != -1:
                    self._flush(worker)
            now = time.monotonic()
            self._check_deadlines(now)
            if now >= self._next_poll:
                self._poll_workers(now)

    def _take_incoming(self) -> None:
        incoming = self._incoming
        queue = self._queue
        while True:
            try:
                job = incoming.get_nowait()
            except Empty:
                return
            if not job.cancelled:
                queue.append(job, job.run.priority)

    def _forget_tasks(self) -> None:
        while True:
            try:
                key = self._forgotten.get_nowait()
            except Empty:
                return
            self.sizer.forget(key)
            self._measured.pop(key, None)
            for worker in self._workers:
                if key in worker.known:
                    worker.known.discard(key)
                    worker.forget.append(key)

    def _wait_time(self, now: float) -> float | None:
        moments = [w.deadline for w in self._workers if w.deadline is not None]
        if self._timers:
            moments.append(self._timers[0][0])
        if self._stop_deadline is not None:
            moments.append(self._stop_deadline)
        if self._idle_deadline is not None:
            moments.append(self._idle_deadline)
        if any(w.jobs or w.kill_reason for w in self._workers):
            moments.append(self._next_poll)
        if not moments:
            return None
        return max(0.0, min(moments) - now)

    def _fire_timers(self, now: float) -> None:
        timers = self._timers
        while timers and timers[0][0] <= now:
            job = heapq.heappop(timers)[2]
            if not job.cancelled:
                self._queue.appendleft(job, job.run.priority)

    # -- sending work -------------------------------------------------------------------

    def _send(self, worker: WorkerProcess, data: bytes) -> None:
        worker.out.append(frame(data))
        self._flush(worker)

    def _flush(self, worker: WorkerProcess) -> None:
        out = worker.out
        sock = worker.sock
        while out:
            chunk = out[0]
            try:
                sent = sock.send(memoryview(chunk)[worker.out_offset :])
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                out.clear()  # the worker is gone; its socket reports the end next
                break
            worker.out_offset += sent
            if worker.out_offset < len(chunk):
                break
            out.popleft()
            worker.out_offset = 0
        writing = bool(out)
        if writing != worker.writing:
            worker.writing = writing
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if writing else 0)
            self._selector.modify(sock, events, worker)

    def _spawn(self) -> WorkerProcess | None:
        parent_sock, child_sock = socket.socketpair()
        child_fd = child_sock.fileno()
        try:
            proc = subprocess.Popen(
                worker_command(child_fd, self._lifeline_r),
                pass_fds=(child_fd, self._lifeline_r),
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as exc:
            parent_sock.close()
            message = (
                f"Task runner 'process' could not start a worker process with "
                f"{sys.executable!r}: {type(exc).__name__}: {exc}"
            )
            if not self._workers:
                self._break(message)
            else:
                logger.warning("%s; going on with %d workers", message, len(self._workers))
            return None
        finally:
            child_sock.close()
        parent_sock.setblocking(False)
        worker = WorkerProcess(proc, parent_sock)
        self._selector.register(parent_sock, selectors.EVENT_READ, worker)
        self._workers.append(worker)
        worker.path = parent_sys_path()
        hello = (HELLO, worker.path, list(sys.argv), self._init_blob, probe())
        self._send(worker, pickle.dumps(hello, pickle.HIGHEST_PROTOCOL))
        return worker

    # -- hearing back -------------------------------------------------------------------

    def _read(self, worker: WorkerProcess) -> None:
        try:
            data = worker.sock.recv(_RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._worker_died(worker)
            return
        worker.inbox += data
        for message in split_frames(worker.inbox):
            try:
                self._on_message(worker, pickle.loads(message))
            except Exception:
                logger.exception(
                    "Task runner 'process' got a message it cannot handle from worker %d; "
                    "replacing that worker",
                    worker.pid,
                )
                self._kill(worker, "protocol")
                return

    def _on_message(self, worker: WorkerProcess, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == RESULT:
            _, run_id, blob, ref, seconds = message
            buffers: list[Any] | Exception | None
            if ref is not None and ref[0] == "lent":
                try:
                    buffers = take_lent(ref, worker.pid)
                except Exception:  # no memory for it now: the file's path says so
                    buffers = None
                self._send(worker, pickle.dumps((RESEND if buffers is None else TAKEN,)))
                if buffers is None:
                    return  # it comes again, in a file
                ref = ("inline", buffers)
            try:
                buffers = open_buffers(ref)
            except Exception as exc:
                remove_ref(ref)
                buffers = exc
            jobs = worker.jobs
            if not jobs or jobs[0].run.id != run_id:
                # Left at the head of the worker's runs: killing the worker settles it
                # with the others (a run taken off first was lost, its flow waiting).
                expected = f"run {jobs[0].run.id}" if jobs else "no result"
                raise RuntimeError(f"a result for run {run_id}, where {expected} was due")
            job = jobs.popleft()
            measured = self._measured.get(job.key)
            if measured is None:
                self._measured[job.key] = [seconds]
            else:
                measured.append(seconds)
            if worker.timed is job:
                worker.timed = None
                worker.deadline = None
            if isinstance(buffers, Exception):
                error = OSError(
                    f"The result of task run {job.run.name!r} came back from its worker "
                    f"process in shared memory, which cannot be read here "
                    f"({type(buffers).__name__}: {buffers})."
                )
                job.run.finish(RemoteResult(State.failed(error), attempt=job.attempts.number))
            else:
                job.run.finish(decode_result(blob, job.run, buffers))
        elif kind == STARTED:
            job = worker.jobs[0]
            if job.timeout is not None:
                worker.deadline = time.monotonic() + job.timeout
        elif kind == STATE:
            job = worker.jobs[0]
            state: State = message[2]
            job.attempts.note(state)
            if state.type is StateType.PENDING:
                worker.deadline = None  # the retry delay does not count
            elif job.timeout is not None:
                worker.deadline = time.monotonic() + job.timeout
            job.run.set_state(state)
        elif kind == READY:
            worker.ready = True
            self.lend_arguments = message[2]
            self._start_failures = 0
        elif kind == INIT_FAILED:
            self._break(
                "The initializer of task runner 'process' raised in a worker process, so "
                f"the runner cannot run tasks:\n{message[1]}"
            )
        else:
            raise RuntimeError(f"unknown message {kind!r}")

    def _poll_workers(self, now: float) -> None:
        """Find workers that died without their socket reporting it (a process they
        forked still holds it open)."""
        self._next_poll = now + _LIVENESS_POLL
        for worker in list(self._workers):
            if (worker.jobs or worker.kill_reason) and worker.proc.poll() is not None:
                while worker in self._workers:
                    self._read(worker)  # what it sent before it died comes first
                    if worker in self._workers and not self._readable(worker):
                        self._worker_died(worker)

    def _readable(self, worker: WorkerProcess) -> bool:
        import select

        try:
            return bool(select.select([worker.sock], [], [], 0)[0])
        except (OSError, ValueError):
            return False

    def _check_deadlines(self, now: float) -> None:
        for worker in self._workers:
            if worker.deadline is not None and now >= worker.deadline and not worker.kill_reason:
                self._kill(worker, "timeout")

    def _kill(self, worker: WorkerProcess, reason: str) -> None:
        """Kill a worker and whatever it started (its process group); its socket then
        reports the end, and `_worker_died` settles its runs."""
        if worker.kill_reason is None:
            worker.kill_reason = reason
        worker.deadline = None
        kill_group(worker)

    # -- a worker ended -----------------------------------------------------------------

    def _worker_died(self, worker: WorkerProcess) -> None:
        self._selector.unregister(worker.sock)
        worker.sock.close()
        self._workers.remove(worker)
        reason = worker.kill_reason
        if reason != "stop":
            kill_group(worker)  # the processes it started must not outlive it
        how = reap(worker, patient=reason == "stop")
        remove_worker_files(worker.pid)  # results it wrote and could not send
        jobs = worker.jobs
        if not worker.ready and reason is None and self._stop is None:
            self._start_failures += 1
            if self._start_failures >= _START_FAILURES and self._broken is None:
                self._break(
                    f"Worker processes of task runner 'process' exit before they are ready "
                    f"({_START_FAILURES} in a row; the last one {how}). Their error output "
                    "(stderr) says why."
                )
        if not jobs:
            if reason is None and worker.ready and self._stop is None:
                logger.warning(
                    "A worker process (pid %d) of task runner 'process' %s while idle; "
                    "it will be replaced when needed",
                    worker.pid,
                    how,
                )
            return
        if reason == "shutdown":
            for job in jobs:
                end(job, shutdown_state(job.run, worker.pid))
            return
        if not worker.ready:
            self._requeue(list(jobs))  # none of them started
            return
        head = jobs.popleft()
        if reason == "protocol":
            state = worker_lost(
                f"Task run {head.run.name!r} crashed: its worker process (pid {worker.pid}) "
                "sent a message the runner could not make sense of while running it (the "
                "'baton' logger says which), so it was killed and replaced. A task that "
                "forks and returns in the child as well as the parent does this."
            )
        elif reason == "timeout" and head is worker.timed:
            assert head.timeout is not None
            state = timed_out(
                head.run.name,
                head.timeout,
                f"its worker process (pid {worker.pid}) was killed and replaced",
            )
        else:
            message = (
                f"Task run {head.run.name!r} crashed: its worker process (pid {worker.pid}) "
                f"{how} while running it."
            )
            if reason is None and worker.proc.returncode == -signal.SIGKILL:
                message += (
                    " Unless something else killed it, the system ran out of memory and "
                    "killed the largest process."
                )
            state = worker_lost(message)
        self._end_attempt(head, state)
        self._requeue(list(jobs))  # sent after the one that ran: they never started

    def _end_attempt(self, job: Job, state: State) -> None:
        """An attempt ended by the worker's death or a deadline: retry it, or end the run."""
        run = job.run
        if run.future.done():
            return
        stopping = self._stop == "now" or job.session.aborted
        retry = None if stopping else job.attempts.after(state)
        if retry is None:
            end(job, state)
            return
        run.set_state(retry.state)
        delay = retry.delay
        job.mark_running = True
        self._cancellable[run.id] = job
        if delay > 0:
            heapq.heappush(self._timers, (time.monotonic() + delay, next(self._sequence), job))
        else:
            self._queue.appendleft(job, run.priority)

    def _requeue(self, jobs: list[Job]) -> None:
        if self._broken is not None or self._stop == "now":
            message = self._broken or "Task runner 'process' shut down before the run started."
            for job in jobs:
                end(job, State.crashed(CrashedRun(message), message))
            return
        for job in reversed(jobs):
            if job.session.aborted:
                self._cancel(job)
            else:
                self._queue.appendleft(job, job.run.priority)

    def _break(self, message: str) -> None:
        """The pool cannot run anything (its initializer fails, workers cannot start)."""
        self._broken = message
        logger.error("%s", message)
        self._take_incoming()
        jobs = list(self._queue) + [t[2] for t in self._timers]
        self._queue.clear()
        self._timers.clear()
        for job in jobs:
            self._cancellable.pop(job.run.id, None)
            if not job.cancelled:
                end(job, State.crashed(CrashedRun(message), message))
