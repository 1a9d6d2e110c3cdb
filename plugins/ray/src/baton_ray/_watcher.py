"""The clocks of a Ray driver: retry delays, and timed attempts, whose streaming
generators it reads (an attempt's timeout starts when the attempt does)."""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Final, final

import ray
from ray import exceptions as ray_errors

from baton_ray._worker import STARTED

if TYPE_CHECKING:
    from baton_ray._driver import Driver
    from baton_ray._jobs import Job

__all__ = ["Watcher"]

logger = logging.getLogger("baton")

# How often the watcher looks for attempts that started, at least, while any is timed.
_POLL: Final = 0.05


@final
class Watcher(threading.Thread):
    """Keeps the clocks: retry delays, and timed attempts, whose streaming generators it
    reads (when an attempt starts, its timeout starts)."""

    def __init__(self, driver: Driver) -> None:
        super().__init__(name="baton-ray-watcher", daemon=True)
        self.driver = driver
        self._cond = threading.Condition()
        self._timers: list[tuple[float, int, Job]] = []
        self._sequence = itertools.count()
        self._timed: set[Job] = set()
        self._stopped = False

    def after(self, delay: float, job: Job) -> None:
        with self._cond:
            heapq.heappush(self._timers, (time.monotonic() + delay, next(self._sequence), job))
            self._cond.notify()

    def watch(self, job: Job) -> None:
        with self._cond:
            self._timed.add(job)
            self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()

    def run(self) -> None:
        while True:
            due: list[Job] = []
            with self._cond:
                if self._stopped:
                    return
                now = time.monotonic()
                while self._timers and self._timers[0][0] <= now:
                    due.append(heapq.heappop(self._timers)[2])
                timed = list(self._timed)
                next_timer = self._timers[0][0] if self._timers else None
                if not due and not timed:
                    self._cond.wait(None if next_timer is None else next_timer - now)
                    continue
            try:
                for job in due:
                    self.driver._unpark(job)
                if timed:
                    self._poll(timed, next_timer)
            except BaseException:
                # A done callback that raised (SystemExit too): keep the clocks going.
                logger.exception("The watcher of task runner 'ray' met an error")

    def _poll(self, timed: list[Job], next_timer: float | None) -> None:
        gone = [job for job in timed if job.gen is None]
        if gone:
            # Ended and waiting to be sent again: watched again once it is.
            with self._cond:
                for job in gone:
                    if job.gen is None:
                        self._timed.discard(job)
            timed = [job for job in timed if job.gen is not None]
            if not timed:
                return
        now = time.monotonic()
        wake = [now + _POLL]
        if next_timer is not None:
            wake.append(next_timer)
        wake += [job.deadline for job in timed if job.deadline is not None and job.stop is None]
        timeout = max(0.0, min(wake) - now)
        try:
            ray.wait([job.gen for job in timed], num_returns=1, timeout=timeout)
        except Exception:
            logger.debug("ray.wait on timed runs failed", exc_info=True)
            time.sleep(timeout)
        for job in timed:
            gen = job.gen
            if gen is None:
                continue
            if self._read(job):
                with self._cond:
                    if job.gen is gen or job.gen is None:  # not already sent again
                        self._timed.discard(job)
            elif job.deadline is not None and job.stop is None and time.monotonic() >= job.deadline:
                job.stop = "timeout"
                job.cancel_in_ray()

    def _read(self, job: Job) -> bool:
        """Take what the attempt's generator has produced; True once it is over."""
        gen = job.gen
        driver = self.driver
        while gen.next_ready() or gen.is_finished():
            try:
                ref = next(gen)
            except StopIteration:
                # It ended before its outcome: its error is in the last item it gave.
                self._ended_in_error(job, job.value_ref)
                return True
            job.items += 1
            if job.items == 1:
                try:
                    if ray.get(ref) != STARTED:
                        raise TypeError("a timed attempt did not start with its marker")
                except BaseException as exc:
                    driver._failed_in_ray(job, exc)
                    return True
                timeout = job.run.task.options.timeout_seconds
                job.deadline = None if timeout is None else time.monotonic() + timeout
                if not job.run.set_running() and job.stop is None:
                    job.stop = "cancel"  # cancelled as it started
                    job.cancel_in_ray()
            elif job.items == 2:
                job.value_ref = ref  # not fetched: it stays in the store
            else:
                try:
                    outcome = ray.get(ref)
                except BaseException as exc:
                    driver._failed_in_ray(job, exc)
                else:
                    driver.outcome(job, outcome)
                return True
        return False

    def _ended_in_error(self, job: Job, ref: Any) -> None:
        error: BaseException = ray_errors.WorkerCrashedError()
        if ref is not None:
            try:
                ray.get(ref)
            except BaseException as exc:
                error = exc
        self.driver._failed_in_ray(job, error)
