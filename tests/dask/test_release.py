"""Dask futures are released once their runs are done and nothing refers to them: a
long-lived scheduler does not keep the tasks of flows that have ended."""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator

import psutil
import pytest
from baton import flow, task
from baton_dask import DaskTaskRunner
from dask_clusters import ProcessCluster
from distributed import Client

MB = 1_000_000


@pytest.fixture(autouse=True)
def no_task_run_log_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    # A captured log record of a completed run holds its State, and so its result on the
    # cluster: the test's log capture would keep those tasks alive.
    monkeypatch.setenv("BATON_LOG_LEVEL", "WARNING")


@pytest.fixture(scope="module")
def observer(dask_processes: ProcessCluster) -> Iterator[Client]:
    with Client(dask_processes.address, set_as_default=False) as client:
        yield client


def scheduler_tasks(observer: Client) -> int:
    count: int = observer.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks))
    return count


def tasks_after_release(observer: Client) -> int:
    """The scheduler's task count once garbage is collected and the releases arrived."""
    gc.collect()
    deadline = time.monotonic() + 10
    count = scheduler_tasks(observer)
    while count and time.monotonic() < deadline:
        time.sleep(0.05)
        count = scheduler_tasks(observer)
    return count


@task
def inc(x: int) -> int:
    return x + 1


@task
def add(x: int, y: int) -> int:
    return x + y


@flow
def thousand_tasks() -> int:
    firsts = inc.map(range(500))
    seconds = add.map(firsts, 1)
    return sum(seconds.result())


EXPECTED = sum(x + 2 for x in range(500))


def test_a_flow_run_leaves_no_task_on_the_scheduler(
    dask_processes: ProcessCluster, observer: Client
) -> None:
    on_url = thousand_tasks.with_options(
        task_runner=dask_processes.address.replace("tcp://", "dask://")
    )
    assert on_url() == EXPECTED
    assert tasks_after_release(observer) == 0


@pytest.mark.slow
def test_twenty_runs_on_one_runner_keep_the_scheduler_flat(
    dask_processes: ProcessCluster, observer: Client
) -> None:
    scheduler = psutil.Process(dask_processes.pid)
    objects: list[int] = []
    rss: list[int] = []
    with DaskTaskRunner(dask_processes.address) as runner:
        shared = thousand_tasks.with_options(task_runner=runner)
        for _ in range(20):
            assert shared() == EXPECTED
            assert tasks_after_release(observer) == 0, "tasks of an ended flow run are released"
            objects.append(observer.run_on_scheduler(live_objects))
            rss.append(scheduler.memory_info().rss)
    # The scheduler's own records (logs and histories, each capped) come and go by tens
    # of thousands of objects (its tasks are counted above); what each run left behind
    # would only pile up, so even the fewest of the last runs would show it (15 runs
    # of 3,400 objects each, say).
    settled = objects[4]
    growth = min(objects[-5:]) - settled
    assert growth < 50_000, f"live objects on the scheduler over 20 runs: {objects}"
    # Its memory may creep as the allocator keeps freed blocks, but not by a run's worth
    # of tasks each time.
    assert max(rss[5:]) - rss[4] < 40 * MB, f"scheduler RSS (MB): {[r // MB for r in rss]}"


def live_objects(dask_scheduler: object) -> int:
    """The scheduler's live Python objects, once garbage is collected."""
    gc.collect()
    return len(gc.get_objects())
