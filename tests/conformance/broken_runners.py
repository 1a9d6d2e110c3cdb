"""Runners that break the rules on purpose, to show that the kit catches them, and one that
keeps the rules in a way that could trip the kit up."""

from __future__ import annotations

import random
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import final

from baton import Capability, State, TaskRun, TaskRunner, get_runner
from baton.runners import RemoteResult, run_call

__all__ = [
    "ForgetfulRunner",
    "LyingRunner",
    "RandomChurningRunner",
    "SilentRunner",
    "SoftTimeoutRunner",
    "SwallowingRunner",
]


@final
class SwallowingRunner(TaskRunner):
    """Reports every run COMPLETED, whatever happened: failures vanish."""

    name = "swallowing"
    capabilities = frozenset({Capability.NESTED})

    def submit(self, run: TaskRun) -> None:
        if not run.set_running():
            return
        state = run.call()
        run.set_state(state if state.is_completed() else State.completed(None))


@final
class LyingRunner(TaskRunner):
    """Runs tasks on a thread runner but declares capabilities it does not have."""

    name = "lying"
    capabilities = frozenset(
        {Capability.PROCESSES, Capability.CANCEL_RUNNING, Capability.NESTED, Capability.ASYNC}
    )

    def __init__(self) -> None:
        self._inner: TaskRunner | None = None

    def on_start(self) -> None:
        self._inner = get_runner("thread").start()

    def on_shutdown(self, wait: bool) -> None:
        if self._inner is not None:
            self._inner.shutdown(wait)

    def submit(self, run: TaskRun) -> None:
        assert self._inner is not None
        self._inner.submit(run)


@final
class RandomChurningRunner(TaskRunner):
    """A thread runner with a background thread that keeps using the global `random`, as
    cluster clients do: the kit's property tests must not mistake it for their own."""

    name = "random-churning"
    capabilities = frozenset({Capability.NESTED, Capability.ASYNC})

    def __init__(self) -> None:
        self._inner: TaskRunner | None = None
        self._stop = threading.Event()

    def on_start(self) -> None:
        self._inner = get_runner("thread").start()
        self._stop.clear()
        threading.Thread(target=self._churn, daemon=True).start()

    def _churn(self) -> None:
        while not self._stop.is_set():
            random.random()

    def on_shutdown(self, wait: bool) -> None:
        self._stop.set()
        if self._inner is not None:
            self._inner.shutdown(wait)

    def submit(self, run: TaskRun) -> None:
        assert self._inner is not None
        self._inner.submit(run)


@final
class SoftTimeoutRunner(TaskRunner):
    """A thread runner that declares HARD_TIMEOUTS: a timed-out run ends on time, but the
    exception raised in its thread cannot stop work blocked in a C call."""

    name = "soft-timeout"
    capabilities = frozenset({Capability.HARD_TIMEOUTS, Capability.NESTED, Capability.ASYNC})

    def __init__(self) -> None:
        self._inner: TaskRunner | None = None

    def on_start(self) -> None:
        self._inner = get_runner("thread").start()

    def on_shutdown(self, wait: bool) -> None:
        if self._inner is not None:
            self._inner.shutdown(wait)

    def submit(self, run: TaskRun) -> None:
        assert self._inner is not None
        self._inner.submit(run)


class _ShippingRunner(TaskRunner):
    """Ships each run's call to a pool of threads and runs it there with `run_call`, as a
    runner of worker processes does; subclasses report the outcome, rightly or not."""

    capabilities = frozenset({Capability.NESTED})

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None

    def on_start(self) -> None:
        self._pool = ThreadPoolExecutor(8)

    def on_shutdown(self, wait: bool) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=wait)

    def submit(self, run: TaskRun) -> None:
        assert self._pool is not None
        call = run.call
        self._pool.submit(lambda: self.report(run, run_call(call)))

    def report(self, run: TaskRun, result: RemoteResult) -> None:
        raise NotImplementedError


@final
class ForgetfulRunner(_ShippingRunner):
    """Applies only the run's own final state: the failed runs a task submitted on the
    worker, which nobody handled, are never reported to the flow."""

    name = "forgetful"

    def report(self, run: TaskRun, result: RemoteResult) -> None:
        if run.set_running():
            run.set_state(result.state)


@final
class SilentRunner(_ShippingRunner):
    """Reports a run's final state, but never that it is running."""

    name = "silent"

    def report(self, run: TaskRun, result: RemoteResult) -> None:
        run.finish(result)
