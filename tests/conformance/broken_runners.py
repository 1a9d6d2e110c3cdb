"""Runners that break the rules on purpose, to show that the kit catches them, and one that
keeps the rules in a way that could trip the kit up."""

from __future__ import annotations

import random
import threading
from typing import final

from baton import Capability, State, TaskRun, TaskRunner, get_runner

__all__ = ["LyingRunner", "RandomChurningRunner", "SwallowingRunner"]


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
