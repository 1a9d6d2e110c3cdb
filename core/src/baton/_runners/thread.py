"""The `thread` runner (the default): a pool of threads, plus one event loop for async tasks."""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable
from queue import Empty, SimpleQueue
from typing import TYPE_CHECKING, Final, final

from baton._context import current_task_run_var
from baton._errors import InvalidOptionsError, RunnerClosedError
from baton._futures import _worker
from baton._resources import ResourcePool, RunQueue, check_capacities
from baton._runner import Capability, TaskRunner

if TYPE_CHECKING:
    from collections.abc import Mapping

    from baton._taskrun import TaskRun

__all__ = ["ThreadPool", "ThreadRunner"]

Work = Callable[[], object]


class _Ranked:
    """Stands in the pool's FIFO queue for one work item with a priority > 0, which
    waits in the pool's `RunQueue`: whoever takes it takes the top of that queue."""


_RANKED: Final = _Ranked()


def default_max_workers() -> int:
    return min(32, (os.cpu_count() or 1) + 4)


class ThreadPool:
    """A bounded pool of worker threads in which a worker that blocks on other runs
    lends its slot to a new thread until it stops blocking (see `secede`), so
    nested submission cannot deadlock a full pool.

    Work waits in a FIFO queue; work with a priority > 0 waits in a `RunQueue`, with a
    marker in the FIFO queue. A worker that takes plain work while ranked work waits
    ranks it too and takes the top instead, so higher priorities go first and the
    order within one priority is kept, and work without priorities costs no more.
    """

    def __init__(self, max_workers: int, name: str = "baton") -> None:
        self.max_workers = max_workers
        self._name = name
        self._work: SimpleQueue[Work | _Ranked | None] = SimpleQueue()
        self._ranked: RunQueue[Work] = RunQueue()
        self._ranked_lock = threading.Lock()
        self._lock = threading.Lock()
        # One token per worker back for more work; deque's append and pop are atomic,
        # so neither side takes a lock that the other may hold when the GIL changes hands.
        self._idle: deque[None] = deque()
        self._threads: set[threading.Thread] = set()
        self._seceded = 0
        self._closed = False

    def submit(self, work: Work, priority: int = 0) -> None:
        if self._closed:
            raise RunnerClosedError("The thread pool has been shut down.")
        if priority:
            with self._ranked_lock:
                self._ranked.append(work, priority)
            self._work.put(_RANKED)
        else:
            self._work.put(work)
        try:
            self._idle.pop()
        except IndexError:
            pass
        else:
            return
        if len(self._threads) - self._seceded < self.max_workers:
            with self._lock:
                if len(self._threads) - self._seceded < self.max_workers:
                    self._spawn()

    def _spawn(self) -> None:
        thread = threading.Thread(
            target=self._serve, name=f"{self._name}-{len(self._threads)}", daemon=True
        )
        self._threads.add(thread)
        thread.start()

    def _serve(self) -> None:
        _worker.pool = self
        work_queue = self._work
        idle = self._idle
        while True:
            item = work_queue.get()
            if item is None:
                work_queue.put(None)  # let the next worker see it too
                break
            # Ranked work waits in `_ranked`; plain work goes there too while any does.
            if item is _RANKED or self._ranked:
                work: Work = self._rank(item)
            else:
                work = item  # type: ignore[assignment]
            try:
                work()
            except BaseException:  # the engine catches everything; this is a last guard
                import logging

                logging.getLogger("baton").exception("Work item %r raised in the pool", work)
            del work, item
            if len(self._threads) - self._seceded > self.max_workers:
                with self._lock:
                    if len(self._threads) - self._seceded > self.max_workers:
                        self._threads.discard(threading.current_thread())
                        break
            idle.append(None)

    def _rank(self, taken: Work | _Ranked) -> Work:
        """The work to do now: the top of the ranked queue, once `taken` is queued there
        if it is plain work (priority 0, behind the plain work ranked before it)."""
        ranked = self._ranked
        with self._ranked_lock:
            if taken is not _RANKED:
                ranked.append(taken)  # type: ignore[arg-type]
            return ranked.popleft()

    def secede(self) -> None:
        """The calling worker is about to block: let another thread take its slot."""
        with self._lock:
            self._seceded += 1
            if not self._closed and len(self._threads) - self._seceded < self.max_workers:
                self._spawn()

    def rejoin(self) -> None:
        """The calling worker stopped blocking and takes a slot again."""
        with self._lock:
            self._seceded -= 1

    def shutdown(self, wait: bool = True) -> list[Work]:
        """Stop the workers; returns the work that was still queued (not run)."""
        with self._lock:
            self._closed = True
            threads = list(self._threads)
        dropped: list[Work] = []
        while True:
            try:
                work = self._work.get_nowait()
            except Empty:
                break
            if work is not None and not isinstance(work, _Ranked):
                dropped.append(work)
        with self._ranked_lock:
            dropped.extend(self._ranked)
            self._ranked.clear()
        self._work.put(None)
        if wait:
            current = threading.current_thread()
            for thread in threads:
                if thread is not current:
                    thread.join()
        return dropped


@final
class ThreadRunner(TaskRunner):
    """Runs sync tasks in a pool of threads and async tasks on one shared event loop.

    Good for I/O-bound work and for code that releases the GIL. `max_workers`
    defaults to the `BATON_THREAD_MAX_WORKERS` setting, else `min(32, CPUs + 4)`.
    A task blocked waiting on other runs does not hold a worker, so nested
    submission works with any `max_workers`, 1 included.

    Runs waiting for a worker start by `priority`, higher first. `resources` declares
    capacities, such as ``{"GPU": 2}``: a run of a task with ``resources={"GPU": 1}``
    waits (PENDING, ``AwaitingResources``) until one is free.
    """

    name = "thread"
    capabilities = frozenset(
        {
            Capability.NESTED,
            Capability.ASYNC,
            Capability.PRIORITIES,
            Capability.RESOURCES,
            Capability.LIMITS,
        }
    )

    def __init__(
        self, max_workers: int | None = None, resources: Mapping[str, float] | None = None
    ) -> None:
        if max_workers is not None and (not isinstance(max_workers, int) or max_workers < 1):
            raise InvalidOptionsError(
                f"Invalid options for task runner 'thread':\n  max_workers: must be a whole "
                f"number >= 1 (got {max_workers!r})"
            )
        self.max_workers = max_workers
        self.resources = check_capacities("thread", resources)
        self._pool: ThreadPool | None = None
        self._gate: ResourcePool | None = None
        self.ignores_resources = False
        """Set on the runner of the runs a task submits on a worker of another runner:
        their resources are not enforced there."""

    def on_start(self) -> None:
        workers = self.max_workers
        if workers is None:
            from baton._settings import get_settings

            workers = get_settings().thread_max_workers or default_max_workers()
        self._pool = ThreadPool(workers, name="baton-thread")
        if self.resources is not None:
            self._gate = ResourcePool("thread", self.resources)

    def on_shutdown(self, wait: bool) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        gate, self._gate = self._gate, None
        if gate is not None:
            for waiting in gate.drain():
                waiting.cancel()
        for work in pool.shutdown(wait):
            run = getattr(work, "__self__", None)
            future = getattr(run, "future", None)
            if future is not None:
                future.cancel()

    def submit(self, run: TaskRun) -> None:
        pool = self._pool
        if pool is None:
            raise RunnerClosedError(f"Task runner 'thread' is not started ({self._status}).")
        if run.task.options.resources and not self.ignores_resources:
            # With no capacities declared, this raises, naming what to declare.
            gate = self._gate or ResourcePool("thread", {})
            if current_task_run_var.get() is not None:
                # Submitted by a task: it runs under what its parent holds (it never
                # waits for it, so it cannot deadlock); only feasibility is checked.
                gate.check(run)
            else:
                gate.offer(run, lambda: self._start(pool, run))
                return
        self._start(pool, run)

    @staticmethod
    def _start(pool: ThreadPool, run: TaskRun) -> None:
        if run.task.is_async:
            from baton import _portal

            _portal.submit(run.execute_async())
        else:
            pool.submit(run.execute, run.priority)

    def __repr__(self) -> str:
        workers = self._pool.max_workers if self._pool else self.max_workers
        return f"<ThreadRunner max_workers={workers} {self._status}>"
