"""A Ray driver's batches: runs that are ready together go to Ray in one Ray task.

A run whose upstream runs have all ended (or that has none), and whose attempts
the driver does not time (no `timeout_seconds`: a hard timeout would kill the
whole batch), waits in a `baton.runners.BatchQueue`. Batches go out as slots free
up (two per CPU of the cluster), sized from how long the task's runs take. A batch
of one goes as a run alone does; a larger one as one `run_batch_remote` task with
one return per run, its value, which stays in the object store for downstream runs
and for reading, plus one return with every run's outcome.

When a batch's Ray task fails outside the engine (its worker died, a value could
not be stored), nothing says which run was at fault: each of its runs goes again
alone, and that failure is not counted as one of their attempts, so that only a
run that fails alone too fails (or crashes).
"""

from __future__ import annotations

import threading
from collections.abc import Hashable
from functools import partial
from typing import TYPE_CHECKING, Any, final

import ray
from baton.runners import FINAL_STATE_TYPES, Batch, BatchQueue, batch_size_of

from baton_ray._failures import failure_state
from baton_ray._jobs import TIMED, WHOLE, freeze, when_done
from baton_ray._worker import run_batch_remote

if TYPE_CHECKING:
    from baton.runners import TaskRun

    from baton_ray._driver import Driver
    from baton_ray._jobs import Job

__all__ = ["Batches", "SentBatch"]

_FINAL = FINAL_STATE_TYPES
_DEPTH = 2  # batches out at once per CPU: each worker has its next one at hand
_SLOTS_EVERY = 5.0  # seconds between two looks at how many CPUs the cluster has
_CHAIN_MOST = 1_000_000  # as many runs ready as a chain could be long: the sizer decides


@final
class SentBatch:
    """A batch of more than one run, as sent: the ObjectRef of its runs' outcomes."""

    __slots__ = ("batch", "outcome_ref")

    def __init__(self, batch: Batch[Job], outcome_ref: Any) -> None:
        self.batch = batch
        self.outcome_ref = outcome_ref


class Batches:
    """The runs of a driver that wait to go in batches, and those in batches sent."""

    def __init__(self, driver: Driver, batch_size: int | None) -> None:
        self.driver = driver
        self.default = batch_size
        self.queue: BatchQueue[Job] = BatchQueue(_DEPTH)
        self.jobs: dict[int, Job] = {}  # queued or in a batch, by run id
        self.alone: set[int] = set()
        self._sent: set[SentBatch] = set()
        self._lock = threading.Lock()

    def wants(self, job: Job) -> bool:
        if job.kind == TIMED or batch_size_of(job.run.task, self.default) == 1:
            return False
        return all(u.task_run.state.type in _FINAL for u in job.upstreams)

    def put(self, job: Job) -> None:
        run = job.run
        self.jobs[run.id] = job
        alone = run.id in self.alone
        if alone:
            self.alone.discard(run.id)
        self.queue.put(
            job,
            _key(job),
            batch_size_of(run.task, self.default),
            alone=alone,
            priority=run.priority,
        )

    def cancel(self, run: TaskRun) -> bool:
        job = self.jobs.get(run.id)
        if job is None or not self.queue.discard(job):
            return False
        self.jobs.pop(run.id, None)
        return True

    def queued(self) -> list[Job]:
        """The jobs waiting to go (taken out of the queue)."""
        taken = self.queue.take(everything=True)
        return [job for batch in taken for job in batch.items]

    def running(self) -> list[Job]:
        with self._lock:
            sent = list(self._sent)
        return [job for batch in sent for job in batch.batch.items]

    def stop_all(self) -> None:
        """Cancel the Ray task of every batch out (the runner shuts down without waiting)."""
        with self._lock:
            sent = list(self._sent)
        for batch in sent:
            try:
                ray.cancel(batch.outcome_ref, force=True)
            except Exception:  # already ended, or Ray is going down
                pass

    def waitables(self) -> list[Any]:
        with self._lock:
            return [sent.outcome_ref for sent in self._sent]

    # -- sending ----------------------------------------------------------------------

    def pump(self) -> None:
        """Send the batches there are slots for."""
        if not len(self.queue):
            return
        self.queue.follow_workers(_cpus, _DEPTH, _SLOTS_EVERY)
        driver = self.driver
        if driver._closing == "now":
            return
        # At most max_pending runs are in Ray: while there is no room, what waits stays
        # in the batch queue, by priority, and goes as runs end (each end pumps again).
        # Taking batches only to give them back made every run's end cost as much as
        # the runs waiting: seconds of a flow run of 10,000.
        room = driver.max_pending - len(driver._active) - self._in_ray()
        if room <= 0:
            return
        # Each slot's share of the room: a batch that took it all would leave the other
        # workers idle (with 1,000 pending and batches of 1,000, one batch at a time).
        share = max(1, driver.max_pending // self.queue.slots)
        back: list[Batch[Job]] = []
        for batch in self.queue.take():
            jobs = []
            for job in batch.items:
                if job.run.future.done():
                    self.jobs.pop(job.run.id, None)
                else:
                    jobs.append(job)
            batch.items = jobs
            if not jobs:
                self.queue.done(batch, ())
            elif room <= 0:
                back.append(batch)
            else:
                keep = min(room, share)
                if len(jobs) > keep:
                    self.queue.give_back(batch, keep=keep)
                self._chain(batch, room)
                room -= len(batch.items)
                if len(batch.items) == 1:
                    self._send_one(batch, batch.items[0])
                else:
                    self._send_batch(batch)
        for batch in reversed(back):
            self.queue.give_back(batch)

    def _chain(self, batch: Batch[Job], room: int) -> None:
        """Add to `batch` the runs of its task that wait for its last run alone, one
        after another (a chain): they run after it in the same Ray task, given its value
        there, instead of each going to Ray once the run before it has ended. Only runs
        the driver does not retry (retries would be decided only after the batch), and
        only while the task's runs are small enough to batch (the sizer's size)."""
        last = batch.items[-1]
        if last.kind != WHOLE or batch.alone:
            return  # a run sent alone after a crash goes alone
        key = batch.key
        most = min(room, self.queue.sizer.size(key, _CHAIN_MOST, 1, batch.fixed))
        if len(batch.items) >= most:
            return
        fits = partial(_fits, key, self.default)
        while len(batch.items) < most:
            follower = self.driver.follower(last, fits)
            if follower is None:
                return
            self.jobs[follower.run.id] = follower
            batch.items.append(follower)
            last = follower

    def _send_one(self, batch: Batch[Job], job: Job) -> None:
        driver = self.driver
        run = job.run
        job.batch = batch
        with driver._lock:
            self.jobs.pop(run.id, None)
            if driver._queue or len(driver._active) + self._in_ray() >= driver.max_pending:
                driver._queue.append(job)  # at most max_pending runs are in Ray
                return
            driver._active[run.id] = job
        driver._launch(job)

    def _in_ray(self) -> int:
        with self._lock:
            return sum(len(sent.batch.items) for sent in self._sent)

    def _send_batch(self, batch: Batch[Job]) -> None:
        driver = self.driver
        jobs = batch.items
        inputs: list[Any] = []
        counts: list[int] = []
        in_batch = {job.run.id: index for index, job in enumerate(jobs)}
        for job in jobs:
            found = driver._inputs(job, in_batch)
            assert isinstance(found, list)  # upstreams are final, or earlier in the batch
            counts.append(len(found))
            inputs += found
        first = jobs[0]
        try:
            remote: Any = run_batch_remote.options(num_returns=len(jobs) + 1, **first.ray_options)
            refs = remote.remote(
                [job.head for job in jobs],
                [job.attempt for job in jobs],
                "here" if first.kind == WHOLE else "runner",
                counts,
                *inputs,
            )
        except Exception:
            # One cannot be sent (an argument that cannot be pickled): alone, each run
            # that cannot fails with an error that names it.
            self.queue.done(batch, ())
            for job in jobs:
                self._send_one(Batch(batch.key, [job]), job)
            return
        sent = SentBatch(batch, refs[-1])
        with self._lock:
            self._sent.add(sent)
        for job, ref in zip(jobs, refs, strict=False):
            job.batch = sent
            job.value_ref = ref
            job.outcome_ref = None
            if not job.run.set_running() and job.run.future.done():
                job.stop = "cancel"  # cancelled meanwhile: its outcome is dropped
        when_done(sent.outcome_ref, _Reporter(driver, sent))

    # -- hearing back -----------------------------------------------------------------

    def ended(self, job: Job) -> None:
        """A job that held a batch's slot alone ended (or left to be retried)."""
        batch = job.batch
        if isinstance(batch, Batch):
            job.batch = None
            self.queue.done(batch)
            self.pump()

    def report(self, sent: SentBatch, ref: Any, outcome: Any) -> None:
        """On the driver's report thread: the batch ended."""
        driver = self.driver
        with self._lock:
            self._sent.discard(sent)
        jobs = sent.batch.items
        if isinstance(outcome, BaseException):
            self.queue.done(sent.batch, ())
            again = []
            for job in jobs:
                job.batch = None
                run = job.run
                if job.stop is not None or driver._closing == "now":
                    driver._end(job, failure_state(run, job.stop or "shutdown", outcome))
                elif not run.future.done():
                    job.value_ref = None
                    self.alone.add(run.id)
                    again.append(job)
                else:
                    self.jobs.pop(run.id, None)
            for job in again:
                self.put(job)
            self.pump()
            return
        outcomes, seconds = outcome
        self.queue.done(sent.batch, seconds)
        for job, each in zip(jobs, outcomes, strict=True):
            job.batch = None
            try:
                if job.stop is not None or job.run.future.done():
                    driver._end(job, job.run.state)
                else:
                    driver.outcome(job, each)
            except BaseException as exc:
                import logging

                logging.getLogger("baton").exception("Reporting the end of %r raised", job.run)
                del exc
        self.pump()


@final
class _Reporter:
    """Called by Ray's thread with a batch's outcomes (or error): hands them over."""

    __slots__ = ("driver", "sent")

    def __init__(self, driver: Driver, sent: SentBatch) -> None:
        self.driver = driver
        self.sent = sent

    def __call__(self, outcome: Any) -> None:
        self.driver._report(self.sent, self.sent.outcome_ref, outcome)


def _fits(key: Hashable, default: int | None, job: Job) -> bool:
    """Whether `job` may follow a run of batch `key` in a chain."""
    return batch_size_of(job.run.task, default) != 1 and _key(job) == key


def _key(job: Job) -> Hashable:
    task = job.run.task
    return (id(task), task.name, job.kind, freeze(job.ray_options))


def _cpus() -> int:
    """The CPUs of the Ray cluster."""
    resources: Any = ray.cluster_resources
    return int(resources().get("CPU", 1))
