"""Runs that are ready together go to Dask in batches: each run of a batch keeps what it
would have alone (its state, its result on the cluster, its failure, its crash)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
from baton import InvalidOptionsError, StateType, flow, task
from baton_dask import DaskTaskRunner
from dask_clusters import local_cluster
from distributed import LocalCluster


@pytest.fixture(scope="module")
def batch_cluster() -> Iterator[LocalCluster]:
    # Its own cluster: a worker is killed here (its nanny starts another).
    with local_cluster() as cluster:
        yield cluster


@pytest.fixture
def runner(batch_cluster: LocalCluster) -> Iterator[DaskTaskRunner]:
    with DaskTaskRunner(batch_cluster.scheduler_address) as started:
        yield started


@task(batch_size=5)
def exit_at(x: int, fatal: int) -> int:
    if x == fatal:
        # A worker tells the flow which runs started a few milliseconds after they do:
        # this run dies later than that, as a run that dies under load does.
        time.sleep(0.2)
        os._exit(3)
    return x


@task(batch_size=5)
def inverse(x: int) -> float:
    return 1 / x


@task(batch_size=4)
def payload(kilobytes: int) -> bytes:
    return b"\x01" * (kilobytes * 1024)


@task
def size(data: bytes) -> int:
    return len(data)


@task
def identity(value: Any) -> Any:
    return value


@task
def total_of(values: list[float]) -> float:
    return sum(values)


@task(batch_size=2)
def hold_or_touch(index: int, folder: str) -> int:
    """Run 0 holds its worker thread until the file ``release`` exists; the others
    leave a file ``ran-<index>`` behind."""
    if index == 0:
        deadline = time.monotonic() + 30
        while not os.path.exists(os.path.join(folder, "release")):
            if time.monotonic() > deadline:
                raise TimeoutError("never released")
            time.sleep(0.01)
    else:
        with open(os.path.join(folder, f"ran-{index}"), "w"):
            pass
    return index


def test_a_run_queued_in_a_sent_batch_cannot_be_cancelled_and_runs(
    runner: DaskTaskRunner, tmp_path: Any
) -> None:
    # Run 1 waits on the worker behind run 0, in the same batch (8 runs over the 4
    # batch slots of 2 worker threads: batches of 2): a cancellation cannot reach it
    # there, so cancel() must say False and the run must say how it ended (it was
    # reported CANCELLED, "before it started", and ran anyway).
    @flow(task_runner=runner)
    def body() -> tuple[StateType, bool, StateType]:
        held, queued, *_ = hold_or_touch.map(range(8), str(tmp_path))
        deadline = time.monotonic() + 20
        while held.state.type is not StateType.RUNNING and time.monotonic() < deadline:
            time.sleep(0.01)
        before = queued.state.type
        cancelled = queued.cancel()
        (tmp_path / "release").touch()
        held.wait(20)
        queued.wait(20)
        return before, cancelled, queued.state.type

    before, cancelled, after = body()
    assert before is StateType.PENDING, "both runs should have gone in one batch"
    assert not cancelled
    assert after is StateType.COMPLETED
    assert (tmp_path / "ran-1").exists()


@task(batch_size=1)
def mark_then_hold(folder: str) -> str:
    with open(os.path.join(folder, "started"), "w"):
        pass
    deadline = time.monotonic() + 30
    while not os.path.exists(os.path.join(folder, "release")):
        if time.monotonic() > deadline:
            raise TimeoutError("never released")
        time.sleep(0.01)
    return "done"


def _report_starts_after(seconds: float) -> None:
    import baton_dask._worker

    baton_dask._worker.REPORT_SECONDS = seconds


def test_a_run_cancelled_as_it_starts_on_its_worker_is_said_to_run_on(
    runner: DaskTaskRunner, tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # A worker reports the runs it starts a few milliseconds later; a run cancelled in
    # between reads Cancelled while Dask runs it on. Nothing can stop it there: the
    # flow's process says so when it hears the start (workers here report after 3 s).
    def warned() -> bool:
        return any("was cancelled as it started" in r.getMessage() for r in caplog.records)

    @flow(task_runner=runner)
    def body() -> tuple[StateType, bool]:
        future = mark_then_hold.submit(str(tmp_path))
        deadline = time.monotonic() + 20
        while not (tmp_path / "started").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        before = future.state.type
        cancelled = future.cancel()
        deadline = time.monotonic() + 20
        while not warned() and time.monotonic() < deadline:
            time.sleep(0.05)
        (tmp_path / "release").touch()
        return before, cancelled

    runner.client.run(_report_starts_after, 3.0)
    try:
        with caplog.at_level(logging.WARNING, logger="baton.dask"):
            before, cancelled = body()
    finally:
        runner.client.run(_report_starts_after, 0.005)
    assert (before, cancelled) == (StateType.PENDING, True)
    assert warned(), "the start of the cancelled run was not told"


def test_the_runner_leaves_a_run_it_cannot_stop_alone(
    runner: DaskTaskRunner, tmp_path: Any
) -> None:
    # runner.cancel(run) of a running run (not cancelled through its future): Dask
    # cannot stop it. The runner dropped its Dask task and said True; the run never got
    # a final state and the flow waited for it forever.
    @flow(task_runner=runner)
    def body() -> tuple[bool, StateType]:
        future = mark_then_hold.submit(str(tmp_path))
        deadline = time.monotonic() + 20
        while not future.state.is_running() and time.monotonic() < deadline:
            time.sleep(0.01)
        stopped = runner.cancel(future.task_run)
        (tmp_path / "release").touch()
        future.wait(20)
        return stopped, future.state.type

    assert body() == (False, StateType.COMPLETED)


def _batch_keys(runner: DaskTaskRunner) -> list[str]:
    def keys(dask_scheduler: Any) -> list[str]:
        return [str(k) for k in dask_scheduler.tasks if str(k).startswith("baton-batch-")]

    found: list[str] = runner.client.run_on_scheduler(keys)
    return found


def test_a_run_that_kills_its_worker_in_a_batch_is_the_only_one_to_crash(
    runner: DaskTaskRunner,
) -> None:
    @flow(task_runner=runner)
    def mapped() -> list[tuple[StateType, Any]]:
        futures = exit_at.map(range(20), 7)
        return [
            (f.wait() and f.state.type, f.state.result(raise_on_failure=False)) for f in futures
        ]

    outcomes = mapped()
    assert [t for t, _ in outcomes] == [
        StateType.CRASHED if i == 7 else StateType.COMPLETED for i in range(20)
    ]
    assert [v for i, (_, v) in enumerate(outcomes) if i != 7] == [i for i in range(20) if i != 7]


def test_a_failing_run_in_a_batch_fails_alone_and_downstream_runs_see_each_result(
    runner: DaskTaskRunner,
) -> None:
    @flow(task_runner=runner)
    def mapped() -> tuple[list[str], float, list[str], list[str]]:
        futures = inverse.map([1, 2, 0, 4, 5, 8, 10, 20])
        names = [(f.wait() and f.state.name) or "" for f in futures]
        batches = _batch_keys(runner)
        ok = [f for f in futures if f.state.is_completed()]
        total = total_of.submit(ok).result()
        after = identity.map(futures)
        return names, total, [(f.wait() and f.state.name) or "" for f in after], batches

    names, total, after, batches = mapped()
    assert batches, "the runs went one by one, not in batches"
    assert names == ["Completed", "Completed", "Failed"] + ["Completed"] * 5
    assert total == pytest.approx(1 + 1 / 2 + 1 / 4 + 1 / 5 + 1 / 8 + 1 / 10 + 1 / 20)
    assert after == ["Completed", "Completed", "UpstreamFailed"] + ["Completed"] * 5


def test_large_results_of_a_batch_stay_on_the_cluster_and_feed_downstream_runs(
    runner: DaskTaskRunner,
) -> None:
    @flow(task_runner=runner)
    def mapped() -> tuple[list[int], list[int]]:
        futures = payload.map([100, 200, 300, 400, 500, 600, 700, 800])
        sizes = size.map(futures).result()
        return sizes, [len(v) for v in futures.result()]

    sizes, read = mapped()
    assert sizes == read == [k * 1024 for k in range(100, 900, 100)]


def test_batching_can_be_turned_off_for_the_runner(batch_cluster: LocalCluster) -> None:
    with DaskTaskRunner(batch_cluster.scheduler_address, batch_size=1) as alone:

        @flow(task_runner=alone)
        def mapped() -> tuple[list[int], list[str]]:
            return identity.map(range(10)).result(), _batch_keys(alone)

        values, batches = mapped()
    assert values == list(range(10))
    assert batches == []
    with pytest.raises(InvalidOptionsError, match="batch_size"):
        DaskTaskRunner(batch_size=0)


@task(batch_size=50)
def small(x: int) -> int:
    return x


@task
def count_of(values: list[int]) -> int:
    return len(values)


def test_a_fan_in_leaves_its_upstreams_in_their_batches_and_a_chain_takes_them_alone(
    runner: DaskTaskRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    from baton_dask._batches import Batches

    claimed: list[int] = []
    claim = Batches.claim

    def counted(self: Batches, upstream: Any) -> Any:
        found = claim(self, upstream)
        if found is not None:
            claimed.append(upstream.task_run_id)
        return found

    monkeypatch.setattr(Batches, "claim", counted)

    @flow(task_runner=runner)
    def fan_in() -> int:
        return count_of.submit(small.map(range(400))).result()

    assert fan_in() == 400
    assert claimed == []  # the 400 runs went in batches of 50, not one Dask task each

    @flow(task_runner=runner)
    def chain() -> int:
        link = small.submit(0)
        for _ in range(20):
            link = small.submit(link)
        return link.result()

    assert chain() == 0
    assert claimed  # links waiting in the batches went alone, each taking its Dask future


@task(batch_size=100)
def tiny(x: int) -> int:
    return x


def test_the_calls_of_sent_batches_are_not_kept_alive_in_the_flows_process(
    runner: DaskTaskRunner,
) -> None:
    # The client keeps the recent messages it sent to the scheduler (Dask's
    # `distributed.admin.low-level-log-length`): a batch whose calls travelled in them
    # as objects kept every call, its arguments included, alive that long (and the
    # collector walked them all, run after run).
    import gc

    from baton.runners import RunCall

    @flow(task_runner=runner)
    def mapped() -> int:
        return len(tiny.map(range(3000)).result())

    assert mapped() == 3000
    gc.collect()
    alive = sum(1 for o in gc.get_objects() if type(o) is RunCall)
    assert alive < 100, f"{alive} calls of ended runs are still alive"
