"""Workers that die under a run, retries after a crash, and timeouts, on a cluster of its own
(its workers are killed here; their nannies start new ones)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from baton import CrashedRun, State, TaskTimeoutError, flow, task, wait
from baton.runners import WorkerLostError
from baton_dask import DaskTaskRunner
from dask_clusters import local_cluster
from distributed import KilledWorker, LocalCluster


@pytest.fixture(scope="module")
def crash_cluster() -> Iterator[LocalCluster]:
    with local_cluster() as cluster:
        yield cluster


@pytest.fixture
def runner(crash_cluster: LocalCluster) -> Iterator[DaskTaskRunner]:
    with DaskTaskRunner(crash_cluster.scheduler_address) as started:
        yield started


def _attempt(directory: str, tag: str) -> int:
    """Record one more attempt of `tag` (with when it started); return its number."""
    number = len(list(Path(directory).glob(f"{tag}-*"))) + 1
    (Path(directory) / f"{tag}-{number}").write_text(repr(time.time()))
    return number


def _started(directory: str, tag: str) -> list[float]:
    found = sorted(Path(directory).glob(f"{tag}-*"), key=lambda p: int(p.name.rsplit("-", 1)[1]))
    return [float(p.read_text()) for p in found]


def _wait_for(path: Path) -> None:
    deadline = time.monotonic() + 30
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.01)


@task
def die(code: int) -> None:
    os._exit(code)


@task
def die_first(directory: str, tag: str) -> int:
    number = _attempt(directory, tag)
    if number == 1:
        os._exit(3)
    return number


@task
def fails_then_dies(directory: str, tag: str) -> int:
    number = _attempt(directory, tag)
    if number == 1:
        raise ValueError("first attempt fails")
    if number == 2:
        os._exit(3)
    return number


@task
def exits(code: int) -> None:
    raise SystemExit(code)


@task
def plus_one(x: int) -> int:
    return x + 1


@task
def held(directory: str, tag: str) -> int:
    number = _attempt(directory, tag)
    (Path(directory) / f"pid-{tag}-{number}").write_text(str(os.getpid()))
    _wait_for(Path(directory) / f"release-{tag}")
    return number


@task(timeout_seconds=0.5)
def spins(directory: str) -> None:
    try:
        while not (Path(directory) / "never").exists():
            time.sleep(0.005)
    except BaseException:
        (Path(directory) / "interrupted").touch()
        raise


def test_a_worker_that_dies_ends_the_run_crashed(runner: DaskTaskRunner) -> None:
    @flow(task_runner=runner)
    def dies() -> tuple[State, str, int]:
        future = die.submit(3)
        future.wait()
        return future.state, future.name, plus_one.submit(1).result()

    state, name, after = dies()
    assert state.is_crashed(), state
    assert f"Task run {name!r} crashed: the Dask worker running it died" in str(state.message)
    assert isinstance(state.error, CrashedRun)
    assert isinstance(state.error.__cause__, KilledWorker)
    assert after == 2, "the flow goes on after a worker died"


def test_a_crashed_run_is_retried_after_its_delay(runner: DaskTaskRunner, tmp_path: Path) -> None:
    directory = str(tmp_path)

    @flow(task_runner=runner)
    def retried() -> int:
        return (
            die_first.with_options(retries=2, retry_delay_seconds=0.5)
            .submit(directory, "r")
            .result()
        )

    assert retried() == 2, "the second attempt ran, and completed"
    first, second = _started(directory, "r")
    assert second - first >= 0.5, "the retry waited for its delay"


def test_without_retries_left_the_crash_is_final(runner: DaskTaskRunner, tmp_path: Path) -> None:
    directory = str(tmp_path)

    @flow(task_runner=runner)
    def no_retries() -> tuple[State]:
        future = die_first.submit(directory, "n")
        future.wait()
        return (future.state,)

    assert no_retries()[0].is_crashed()
    assert len(_started(directory, "n")) == 1


def test_a_crash_after_a_retry_on_the_worker_continues_the_count_of_attempts(
    runner: DaskTaskRunner, tmp_path: Path
) -> None:
    # retries=1: attempt 1 fails (retried on its worker), attempt 2 kills the worker; no
    # retry is left, so the crash is final, and there is no third attempt.
    directory = str(tmp_path)

    @flow(task_runner=runner)
    def counted() -> tuple[State]:
        future = fails_then_dies.with_options(retries=1).submit(directory, "c")
        future.wait()
        return (future.state,)

    [state] = counted()
    assert state.is_crashed(), state
    assert isinstance(state.error, WorkerLostError)
    assert len(_started(directory, "c")) == 2


def test_a_task_that_raises_system_exit_crashes_and_is_not_retried(
    runner: DaskTaskRunner,
) -> None:
    @flow(task_runner=runner)
    def exiting() -> tuple[State]:
        future = exits.with_options(retries=2).submit(4)
        future.wait()
        return (future.state,)

    [state] = exiting()
    assert state.is_crashed(), state
    assert isinstance(state.error, SystemExit)
    assert "SystemExit" in str(state.message)


def test_a_downstream_of_a_crashed_upstream_gets_the_retried_result(
    runner: DaskTaskRunner, tmp_path: Path
) -> None:
    directory = str(tmp_path)

    @flow(task_runner=runner)
    def chain() -> tuple[int, int]:
        upstream = die_first.with_options(retries=1).submit(directory, "u")
        downstream = plus_one.submit(upstream)
        return downstream.result(), upstream.result()

    assert chain() == (3, 2)


def test_a_worker_killed_from_outside_crashes_the_run_and_it_is_retried(
    runner: DaskTaskRunner, tmp_path: Path
) -> None:
    directory = str(tmp_path)

    @flow(task_runner=runner)
    def killed() -> int:
        future = held.with_options(retries=1).submit(directory, "k")
        _wait_for(tmp_path / "pid-k-1")
        os.kill(int((tmp_path / "pid-k-1").read_text()), signal.SIGKILL)
        (tmp_path / "release-k").touch()
        return future.result()

    number = killed()
    assert number == 2, "the run crashed with its worker, and its retry completed"


def test_a_timeout_ends_the_run_timed_out_and_stops_python_code(
    runner: DaskTaskRunner, tmp_path: Path
) -> None:
    @flow(task_runner=runner)
    def timed_out() -> tuple[State]:
        future = spins.submit(str(tmp_path))
        wait([future])
        return (future.state,)

    [state] = timed_out()
    assert state.name == "TimedOut", state
    assert isinstance(state.error, TaskTimeoutError)
    _wait_for(tmp_path / "interrupted")
