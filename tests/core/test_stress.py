"""Stress: many runs, long dependency chains, and a lazy map over a million items.

Run with ``-s`` to see the memory figures of the lazy map.
"""

from __future__ import annotations

import gc
import sys
import threading
from collections.abc import Iterator
from typing import Any

import psutil
import pytest
from baton import Future, StateType, flow, task, wait

pytestmark = pytest.mark.slow

GATE_SECONDS = 30
MB = 1024 * 1024


@pytest.fixture(autouse=True)
def _quiet_logs(monkeypatch: pytest.MonkeyPatch) -> None:
    # One log line per run would dominate the cost of a no-op task.
    monkeypatch.setenv("BATON_LOG_LEVEL", "WARNING")


@task
def inc(x: int) -> int:
    return x + 1


class RssSampler:
    """Samples this process's resident memory in a background thread."""

    def __init__(self, interval: float = 0.02) -> None:
        self._process = psutil.Process()
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self.peak = self.rss()
        self.samples = 0

    def rss(self) -> int:
        return int(self._process.memory_info().rss)

    def sample(self) -> None:
        self.peak = max(self.peak, self.rss())
        self.samples += 1

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.sample()

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def test_a_lazy_map_over_a_million_items_keeps_memory_flat() -> None:
    n = 1_000_000
    bound = 1_000
    in_flight_seen = [0]
    submitted_seen = [0]

    gc.collect()
    sampler = RssSampler()
    before = sampler.rss()

    def items() -> Iterator[int]:
        for i in range(n):
            if i % 50_000 == 0:
                sampler.sample()
            yield i

    @flow(task_runner="thread")
    def body() -> int:
        total = 0
        lazy = inc.map(items(), max_in_flight=bound)
        for future in lazy:
            total += future.result()
        submitted_seen[0] = lazy.submitted
        in_flight_seen[0] = lazy.max_in_flight
        return total

    with sampler:
        total = body()
    gc.collect()
    after = sampler.rss()
    growth = sampler.peak - before
    print(
        f"\nlazy map of {n:,} items, max_in_flight={bound}: RSS before {before / MB:.1f} MB, "
        f"peak {sampler.peak / MB:.1f} MB (+{growth / MB:.1f} MB), after {after / MB:.1f} MB, "
        f"{sampler.samples} samples"
    )
    assert total == n * (n + 1) // 2
    assert submitted_seen[0] == n
    assert in_flight_seen[0] == bound
    # Holding a million futures, states and results would take far more than this.
    assert growth < 150 * MB, f"RSS grew by {growth / MB:.1f} MB"


def test_a_hundred_thousand_mapped_runs_all_complete() -> None:
    n = 100_000

    @flow(task_runner="thread")
    def body() -> list[int]:
        return inc.map(range(n)).result()

    assert body() == list(range(1, n + 1))


def test_a_chain_of_ten_thousand_dependent_runs_completes() -> None:
    n = 10_000
    started, release = threading.Event(), threading.Event()
    limit = sys.getrecursionlimit()

    @task
    def head() -> int:
        started.set()
        release.wait(GATE_SECONDS)
        return 0

    @flow(task_runner="thread")
    def body() -> int:
        link: Future[int] = head.submit()
        try:
            assert started.wait(GATE_SECONDS)
            # The head is still running: every link waits for the one before it.
            for _ in range(n):
                link = inc.submit(link)
        finally:
            release.set()
        return link.result(timeout=GATE_SECONDS)

    assert body() == n
    assert sys.getrecursionlimit() == limit


def test_a_chain_of_ten_thousand_runs_after_a_failure_all_end() -> None:
    n = 10_000
    started, release = threading.Event(), threading.Event()
    seen: dict[str, Any] = {}

    @task
    def head() -> int:
        started.set()
        release.wait(GATE_SECONDS)
        raise ValueError("head failed")

    @flow(task_runner="thread")
    def body() -> None:
        links: list[Future[int]] = [head.submit()]
        try:
            assert started.wait(GATE_SECONDS)
            for _ in range(n):
                links.append(inc.submit(links[-1]))
        finally:
            release.set()
        _, seen["not_done"] = wait(links, timeout=GATE_SECONDS)
        seen["names"] = {f.state.name for f in links[1:]}
        seen["last"] = links[-1].result(raise_on_failure=False)

    body()
    assert seen["not_done"] == set()
    assert seen["names"] == {"UpstreamFailed"}
    assert isinstance(seen["last"].__cause__, ValueError)


def test_a_chain_of_ten_thousand_runs_on_an_inline_runner_completes() -> None:
    n = 10_000
    started, release = threading.Event(), threading.Event()

    @task
    def head() -> int:
        started.set()
        release.wait(GATE_SECONDS)
        return 0

    # The head runs outside the flow, so each link waits for it and then runs inside
    # `submit` of the sync runner while the link before it is still finishing.
    first = head.submit()

    @flow(task_runner="sync")
    def body() -> int:
        link: Future[int] = first
        try:
            assert started.wait(GATE_SECONDS)
            for _ in range(n):
                link = inc.submit(link)
        finally:
            release.set()
        return link.result(timeout=GATE_SECONDS)

    assert body() == n
    assert first.state.type is StateType.COMPLETED
