"""Results move worker to worker, and reach the driver only when read: in few messages for
many small ones, one by one for large ones."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import psutil
import pytest
from baton import RunnerClosedError, State, flow, task, wait
from baton_dask import DaskTaskRunner, dask_options
from baton_dask import _session as session_module
from distributed import Future as DaskFuture
from distributed import LocalCluster, get_worker

BIG = 200_000_000
MB = 1_000_000


@pytest.fixture
def runner(cluster: LocalCluster) -> Iterator[DaskTaskRunner]:
    with DaskTaskRunner(cluster.scheduler_address) as started:
        yield started


@pytest.fixture
def workers(cluster: LocalCluster) -> list[str]:
    addresses = sorted(cluster.scheduler_info["workers"])
    assert len(addresses) == 2
    return addresses


class PeakRSS:
    """The highest resident memory of this process while the block runs, sampled often."""

    def __init__(self) -> None:
        self._process = psutil.Process()
        self._stop = threading.Event()
        self.baseline = 0
        self.peak = 0

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            self._stop.wait(0.002)

    def __enter__(self) -> PeakRSS:
        self.baseline = self.peak = self._process.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)

    @property
    def growth(self) -> int:
        return self.peak - self.baseline


@task
def produce(size: int) -> tuple[str, bytes]:
    return get_worker().address, b"x" * size


@task
def consume(produced: tuple[str, bytes]) -> tuple[str, str, int]:
    producer, data = produced
    return producer, get_worker().address, len(data)


@task
def square(x: int) -> int:
    return x * x


@task
def text(n: int) -> str:
    return "y" * n


def test_a_large_result_goes_worker_to_worker_never_through_the_driver(
    runner: DaskTaskRunner, workers: list[str]
) -> None:
    first, second = workers

    def pipeline() -> tuple[str, str, int]:
        with dask_options(workers=[first]):
            produced = produce.submit(BIG)
        with dask_options(workers=[second]):
            return consume.submit(produced).result()

    flow(task_runner=runner)(lambda: consume.submit(produce.submit(10)).result())()  # warm up
    with PeakRSS() as passed_on:
        producer, consumer, size = flow(task_runner=runner)(pipeline)()
    assert (producer, consumer, size) == (first, second, BIG)
    assert passed_on.growth < 50 * MB, (
        f"the driver grew by {passed_on.growth / MB:.0f} MB while {BIG / MB:.0f} MB went from "
        "one worker to another"
    )

    # The same measurement sees the data when the driver does read it.
    with PeakRSS() as read_here:
        _, data = flow(task_runner=runner)(lambda: produce.submit(BIG).result())()
    assert len(data) == BIG
    del data
    assert read_here.growth > BIG * 0.9


def test_reading_small_results_one_by_one_takes_one_message(
    runner: DaskTaskRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    fetched: list[int] = []
    gather = session_module.Session._gather
    result = DaskFuture.result

    def counting_gather(self: Any, futures: list[DaskFuture[Any]]) -> Any:
        fetched.append(len(futures))
        return gather(self, futures)

    def counting_result(self: DaskFuture[Any], timeout: float | None = None) -> Any:
        fetched.append(1)
        return result(self, timeout)

    monkeypatch.setattr(session_module.Session, "_gather", counting_gather)
    monkeypatch.setattr(DaskFuture, "result", counting_result)

    @flow(task_runner=runner)
    def read_each() -> list[int]:
        # Runs sent alone, each its own Dask task (in batches, small results come back
        # with the batch's outcomes, and reading them fetches nothing).
        futures = square.with_options(batch_size=1).map(range(300))
        wait(futures)
        return [f.result() for f in futures]

    assert read_each() == [x * x for x in range(300)]
    assert fetched == [300], "one message fetched every finished small result of the task"


def test_large_results_are_fetched_only_when_read(
    runner: DaskTaskRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    fetched: list[int] = []
    gather = session_module.Session._gather
    result = DaskFuture.result

    def counting_gather(self: Any, futures: list[DaskFuture[Any]]) -> Any:
        fetched.append(len(futures))
        return gather(self, futures)

    def counting_result(self: DaskFuture[Any], timeout: float | None = None) -> Any:
        fetched.append(1)
        return result(self, timeout)

    monkeypatch.setattr(session_module.Session, "_gather", counting_gather)
    monkeypatch.setattr(DaskFuture, "result", counting_result)
    large = 100_000  # more than LARGE_RESULT_BYTES

    @flow(task_runner=runner)
    def read_one() -> tuple[str, list[State]]:
        futures = text.map([large] * 4)
        wait(futures)
        return futures[0].result(), [f.state for f in futures]

    first, states = read_one()
    assert first == "y" * large
    assert all(state.is_completed() for state in states)
    assert fetched == [1], "only the result read was fetched"


def test_results_read_after_the_runner_shut_down(cluster: LocalCluster) -> None:
    kept: list[Any] = []

    @flow(task_runner=DaskTaskRunner(cluster.scheduler_address))
    def leave_results_unread() -> None:
        kept.extend([square.submit(7), text.submit(100_000)])
        wait(kept)

    leave_results_unread()
    small, large = kept
    assert small.result() == 49, "small unread results are fetched before the client closes"
    with pytest.raises(RunnerClosedError, match="stayed on the Dask cluster"):
        large.result()


@task
def make_state(failed: bool) -> State:
    return State.failed(ValueError("a value")) if failed else State.completed("inner")


def test_a_state_a_task_returns_is_the_state_its_run_ends_in(runner: DaskTaskRunner) -> None:
    @flow(task_runner=runner)
    def adopted() -> tuple[list[str], Any, str]:
        made = make_state.map([False, True])
        wait(made)
        failed = made[1].result(raise_on_failure=False)
        return [f.state.type.value for f in made], made[0].result(), repr(failed)

    kinds, value, error = adopted()
    assert kinds == ["COMPLETED", "FAILED"]
    assert value == "inner"
    assert error == "ValueError('a value')"


@task
def echo(value: Any) -> Any:
    return value


def test_an_argument_that_cannot_be_pickled_fails_only_its_run(runner: DaskTaskRunner) -> None:
    @flow(task_runner=runner)
    def mixed() -> tuple[list[State], State]:
        futures = echo.map([1, threading.Lock(), 3, 4])
        after = square.submit(futures[1])
        wait([*futures, after])
        return [f.state for f in futures], after.state

    states, after = mixed()
    assert [s.type.value for s in states] == ["COMPLETED", "FAILED", "COMPLETED", "COMPLETED"]
    assert [states[i].result() for i in (0, 2, 3)] == [1, 3, 4]
    assert "cannot be pickled" in str(states[1].message)
    assert "echo" in str(states[1].message)
    assert after.name == "UpstreamFailed", after


def test_cancelling_an_upstream_spares_the_runs_sent_with_it(runner: DaskTaskRunner) -> None:
    @flow(task_runner=runner)
    def cancel_one() -> tuple[list[State], State, State]:
        before = [square.submit(i) for i in range(3)]
        upstream = square.submit(10)
        downstream = square.submit(upstream)
        after = [square.submit(i) for i in range(3, 6)]
        upstream.cancel()
        wait([*before, *after, downstream])
        return [f.state for f in before + after], upstream.state, downstream.state

    others, upstream, downstream = cancel_one()
    assert [s.result() for s in others] == [0, 1, 4, 9, 16, 25]
    assert upstream.is_cancelled()
    assert downstream.name == "UpstreamFailed", downstream
