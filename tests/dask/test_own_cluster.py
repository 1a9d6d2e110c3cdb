"""A cluster the runner starts itself: Dask does not run a task again after its worker died
(Baton retries, as the task says), and runs do not wait for ever on a cluster whose
workers are all gone."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from baton import InvalidOptionsError, State, flow, task
from baton_dask import DaskTaskRunner


@pytest.fixture(scope="module")
def own() -> Iterator[DaskTaskRunner]:
    runner = DaskTaskRunner(
        cluster_kwargs={
            "n_workers": 1,
            "threads_per_worker": 1,
            "processes": True,
            "host": "127.0.0.1",
            "dashboard_address": ":0",
        },
        no_workers_timeout=1,
    )
    with runner as started:
        yield started


@task
def inc(x: int) -> int:
    return x + 1


def _allowed_failures(dask_scheduler: Any) -> int:
    return int(dask_scheduler.allowed_failures)


def test_dask_does_not_retry_the_tasks_of_a_cluster_the_runner_starts(
    own: DaskTaskRunner,
) -> None:
    assert own.client.run_on_scheduler(_allowed_failures) == 0


def test_no_workers_timeout_must_be_a_positive_number_of_seconds() -> None:
    with pytest.raises(InvalidOptionsError, match=r"no_workers_timeout: .*seconds > 0"):
        DaskTaskRunner(no_workers_timeout=0)
    assert DaskTaskRunner(no_workers_timeout=None) is not None


def test_runs_crash_when_the_cluster_has_had_no_worker_for_too_long(
    own: DaskTaskRunner,
) -> None:
    # Last in this module: it takes the cluster's workers away.
    own._cluster.scale(0)
    deadline = time.monotonic() + 60
    while own.client.scheduler_info(n_workers=0)["n_workers"]:
        assert time.monotonic() < deadline, "the worker did not leave"
        time.sleep(0.05)

    @flow(task_runner=own)
    def stranded() -> tuple[State]:
        future = inc.submit(1)
        future.wait(timeout=60)
        return (future.state,)

    [state] = stranded()
    assert state.is_crashed(), state
    assert "has had no worker for 1 s" in str(state.message)
    assert "no_workers_timeout" in str(state.message)
