"""How the `process` runner's pool sends runs to its workers: which runs go to which
worker, and how many in one message. Part of `WorkerPool` (see _process_pool), in
the dispatcher thread.

Batches follow the runner API's shared policy, `baton.runners.BatchSizer`: a worker
times each run and sends the time with its result, and the pool learns, per task,
how long its runs take.

- Runs of a task not measured yet, runs that take ``alone_seconds`` (0.1 s) or
  more, and runs whose batch size is 1 go one by one, each to an idle worker: long
  runs spread over every worker, and none waits behind another while a worker is
  free.
- Small runs go in batches of about ``target_seconds`` (50 ms) of work, at most
  `MAX_BATCH` runs, and up to two batches' worth per worker, so that each worker
  has its next runs at hand. A worker that holds runs is sent more only once a
  whole batch fits: a few runs sent sooner would wait behind the ones it holds, and
  cost a message each (in a flow that submits runs more slowly than the workers run
  them, topping workers up run by run cost three messages where one does). A batch
  never takes so many runs that a worker would be left idle while runs wait. Runs of
  other small tasks may share a batch, as long as it holds no more than each of them
  may take.
- A run with a timeout goes alone to an idle worker: killing that worker at its
  deadline must not hit any other run.
- A batch size fixed by the task's ``batch_size`` option, else by the runner's
  (`batch_size_of`), replaces the policy's.
"""

from __future__ import annotations

import pickle
from typing import TYPE_CHECKING, Any

from baton._runners._process_jobs import Job, Session, WorkerProcess
from baton._runners._worker import BATCH, parent_sys_path
from baton.runners import BatchSizer, RunQueue, batch_size_of

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["DEPTH", "MAX_BATCH", "PoolSending", "new_sizer"]

# Runs per message at most: enough to make messaging cheap per run (a batch of
# no-ops costs the worker well under the 50 ms the sizer aims at), few enough that
# the runs a worker holds ahead are soon shared out again when the queue runs dry.
MAX_BATCH = 64
DEPTH = 2  # batches' worth of small runs a worker holds: the one it runs, the next


def new_sizer() -> BatchSizer:
    return BatchSizer(target_seconds=0.05, alone_seconds=0.1, max_size=MAX_BATCH)


class PoolSending:
    """The sending half of `WorkerPool`."""

    max_workers: int
    sizer: BatchSizer
    _measured: dict[int, list[float]]  # task key -> seconds of its runs that ended
    _queue: RunQueue[Job]
    _workers: list[WorkerProcess]
    _cancellable: dict[int, Job]
    _broken: str | None
    _stop: str | None
    _spawn: Callable[[], WorkerProcess | None]
    _send: Callable[[WorkerProcess, bytes], None]

    def _assign(self) -> None:
        queue = self._queue
        while queue and queue.peek().cancelled:
            queue.popleft()
        if not queue or self._broken is not None or self._stop == "now":
            return
        measured = self._measured
        if measured:  # durations heard since the last time, one call per task
            observe = self.sizer.observe
            for key, seconds in measured.items():
                observe(key, seconds)
            measured.clear()
        waiting = len(queue)
        sizes: dict[tuple[int, Session], int] = {}
        size = self._size(queue.peek(), waiting, sizes)
        target = DEPTH * size if size > 1 else 1
        workers = [w for w in self._workers if w.kill_reason is None and w.timed is None]
        room = sum(max(0, target - len(w.jobs)) for w in workers)
        if waiting > room and len(self._workers) < self.max_workers:
            needed = -(-(waiting - room) // target)
            for _ in range(min(needed, self.max_workers - len(self._workers))):
                worker = self._spawn()
                if worker is None:
                    break
                workers.append(worker)
        workers.sort(key=lambda w: len(w.jobs))
        for worker in workers:
            while queue and queue.peek().cancelled:
                queue.popleft()
            if not queue:
                break
            jobs = worker.jobs
            size = self._size(queue.peek(), waiting, sizes)
            if size and jobs and not self._size(jobs[-1], waiting, sizes):
                continue  # it runs a long run: small runs would wait behind it
            space = (DEPTH * size if size > 1 else 1) - len(jobs)
            if space > 0 and (not jobs or space >= size):
                session = jobs[0].session if jobs else None
                batch = self._take(min(space, max(1, size)), session, waiting, sizes)
                if batch:
                    self._send_batch(worker, batch)

    def _size(self, job: Job, waiting: int, sizes: dict[tuple[int, Session], int]) -> int:
        """How many runs of `job`'s task go in one batch now; 0: one by one, each to an
        idle worker (runs with a timeout, runs not measured yet or long, batch size 1)."""
        entry = (job.key, job.session)
        size = sizes.get(entry)
        if size is None:
            fixed = batch_size_of(job.run.task, job.session.batch_size)
            alone = fixed == 1 or (fixed is None and not self._small(job.key))
            if alone or job.timeout is not None:
                size = 0
            else:
                size = self.sizer.size(job.key, waiting, DEPTH * self.max_workers, fixed)
            sizes[entry] = size
        return size

    def _small(self, key: int) -> bool:
        seconds = self.sizer.estimate(key)
        return seconds is not None and seconds < self.sizer.alone_seconds

    def _take(
        self,
        limit: int,
        session: Session | None,
        waiting: int,
        sizes: dict[tuple[int, Session], int],
    ) -> list[Job]:
        """Runs from the head of the queue for a worker that is idle (`session` None) or
        holds runs of `session`: of one runner only, so that stopping that runner's
        runs kills no other's."""
        queue = self._queue
        batch: list[Job] = []
        idle = session is None
        key = -1
        while queue and len(batch) < limit:
            job = queue.peek()
            if job.cancelled:
                queue.popleft()
                continue
            if session is None:
                session = job.session
            elif job.session is not session:
                break
            if job.timeout is not None:
                # A run with a timeout goes alone to an idle worker: killing the worker
                # at its deadline must not hit any other run.
                if not batch and idle:
                    batch.append(queue.popleft())
                break
            if job.key != key:
                if batch:
                    # Another task's run joins only while the batch holds no more
                    # runs than that task's own batches may.
                    size = self._size(job, waiting, sizes)
                    if size <= len(batch):
                        break
                    limit = min(limit, size)
                key = job.key
            batch.append(queue.popleft())
        return batch

    def _send_batch(self, worker: WorkerProcess, batch: list[Job]) -> None:
        items: list[tuple[Any, ...]] = []
        new_tasks: list[tuple[int, bytes]] = []
        sent: list[Job] = []
        cancellable = self._cancellable
        where = f"pid {worker.pid}"
        for job in batch:
            run = job.run
            cancellable.pop(run.id, None)
            if job.cancelled:
                continue
            if job.mark_running:
                if not run.set_running(where):
                    continue  # cancelled meanwhile
                job.mark_running = False
            elif run.future.done():
                continue
            job.dispatched = True
            key = job.key
            if key not in worker.known:
                worker.known.add(key)
                new_tasks.append((key, job.blob))
            timed = job.timeout is not None
            item: tuple[Any, ...] = (
                run.id,
                run.name,
                key,
                job.attempts.number,
                timed,
                job.payload,
                job.shared,
                job.limits,
            )
            if run.trace is not None:  # OpenTelemetry on: the run's trace context goes along
                item += (run.trace.carrier(),)
            items.append(item)
            sent.append(job)
        if not sent:
            return
        worker.jobs.extend(sent)
        if sent[0].timeout is not None:
            worker.timed = sent[0]
        forget, worker.forget = worker.forget, []
        path: list[str] | None = parent_sys_path()
        if path == worker.path:
            path = None  # unchanged: nothing to send
        else:
            worker.path = path or []
        context: tuple[Any, ...] | None = sent[0].session.context
        if context is None or context is worker.context:
            context = None
        else:
            if context == worker.context:
                context = None
            worker.context = sent[0].session.context
        message = (BATCH, new_tasks, forget, items, path, context)
        self._send(worker, pickle.dumps(message, pickle.HIGHEST_PROTOCOL))
