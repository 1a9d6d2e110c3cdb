"""Where runs go on the cluster: Dask resources and workers from task tags, `dask_options`
and ``dask.annotate``, on a cluster with one plain worker and one that has a GPU."""

from __future__ import annotations

from collections.abc import Iterator

import dask
import pytest
from baton import InvalidOptionsError, flow, task
from baton_dask import DaskTaskRunner, dask_options
from baton_dask._options import Placement, placement_for
from distributed import Nanny, Scheduler, SpecCluster, get_worker


@pytest.fixture(scope="module")
def gpu_cluster() -> Iterator[SpecCluster]:
    worker = {"nthreads": 1, "host": "127.0.0.1", "dashboard_address": None}
    cluster = SpecCluster(
        scheduler={
            "cls": Scheduler,
            "options": {"host": "127.0.0.1", "dashboard_address": ":0"},
        },
        workers={
            "plain": {"cls": Nanny, "options": {**worker, "name": "plain"}},
            "gpu": {"cls": Nanny, "options": {**worker, "name": "gpu", "resources": {"GPU": 1}}},
        },
    )
    try:
        cluster.wait_for_workers(2, timeout=60)
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def runner(gpu_cluster: SpecCluster) -> Iterator[DaskTaskRunner]:
    with DaskTaskRunner(gpu_cluster.scheduler_address) as started:
        yield started


@task
def worker_name(_: int) -> str:
    return str(get_worker().name)


@task(tags=["dask-resource:GPU=1", "etl"])
def on_a_gpu(_: int) -> str:
    return str(get_worker().name)


def test_a_resource_tag_places_every_run_of_the_task(runner: DaskTaskRunner) -> None:
    @flow(task_runner=runner)
    def tagged() -> list[str]:
        return on_a_gpu.map(range(6)).result()

    assert tagged() == ["gpu"] * 6


def test_dask_options_places_the_runs_submitted_in_it(runner: DaskTaskRunner) -> None:
    @flow(task_runner=runner)
    def placed() -> tuple[list[str], str]:
        with dask_options(resources={"GPU": 1}):
            gpu = worker_name.map(range(6))
        return gpu.result(), worker_name.submit(0).result()

    gpu, _ = placed()
    assert gpu == ["gpu"] * 6


def test_dask_annotate_is_honoured(runner: DaskTaskRunner) -> None:
    @flow(task_runner=runner)
    def annotated() -> list[str]:
        with dask.annotate(resources={"GPU": 1}):
            futures = worker_name.map(range(6))
        return futures.result()

    assert annotated() == ["gpu"] * 6


def test_workers_restrict_runs_to_a_worker(
    runner: DaskTaskRunner, gpu_cluster: SpecCluster
) -> None:
    addresses = {
        info["name"]: address for address, info in gpu_cluster.scheduler_info["workers"].items()
    }

    @flow(task_runner=runner)
    def pinned() -> list[str]:
        with dask_options(workers=addresses["plain"]):
            return worker_name.map(range(6)).result()

    assert pinned() == ["plain"] * 6


def test_nested_blocks_add_resources_and_override_the_rest() -> None:
    with dask_options(resources={"GPU": 1}, priority=1):
        with dask_options(resources={"RAM": 2}, priority=5, allow_other_workers=True):
            inner = placement_for(frozenset())
        outer = placement_for(frozenset())
    assert inner == Placement((("GPU", 1.0), ("RAM", 2.0)), 5, (), True)
    assert outer == Placement((("GPU", 1.0),), 1)
    assert placement_for(frozenset()) is None
    assert placement_for(frozenset({"etl", "dask-priority:3"})) == Placement((), 3)
    with dask_options(priority=7):
        assert placement_for(frozenset({"dask-resource:GPU=1", "dask-priority:3"})) == Placement(
            (("GPU", 1.0),), 7
        )


def test_bad_placements_are_clear_errors(runner: DaskTaskRunner) -> None:
    with pytest.raises(InvalidOptionsError, match=r"resources: 'GPU': -1 is not a resource"):
        with dask_options(resources={"GPU": -1}):
            pass
    with pytest.raises(InvalidOptionsError, match="priority: must be a whole number"):
        with dask_options(priority=1.5):  # type: ignore[arg-type]
            pass
    with pytest.raises(InvalidOptionsError, match="workers: must be a worker address"):
        with dask_options(workers=[1]):  # type: ignore[list-item]
            pass

    badly_tagged = worker_name.with_options(tags=["dask-resource:GPU"])

    @flow(task_runner=runner)
    def submits_a_bad_tag() -> None:
        badly_tagged.submit(0)

    with pytest.raises(InvalidOptionsError, match=r"'dask-resource:NAME=AMOUNT'"):
        submits_a_bad_tag()


@task(resources={"GPU": 1})
def needs_a_gpu(_: int) -> str:
    return str(get_worker().name)


def test_task_resources_place_runs_as_dask_resources(runner: DaskTaskRunner) -> None:
    @flow(task_runner=runner)
    def placed() -> list[str]:
        return needs_a_gpu.map(range(6)).result()

    assert placed() == ["gpu"] * 6


def test_task_priority_and_resources_lie_under_tags_and_blocks() -> None:
    from baton_dask._options import task_placement

    own = task_placement(3, {"GPU": 1})
    assert own == Placement((("GPU", 1.0),), 3)
    assert own.merged(Placement((("disk", 1.0),), 7)) == Placement((("GPU", 1.0), ("disk", 1.0)), 7)
    assert task_placement(0, {}).submit_kwargs() == {}


def test_resources_no_worker_has_fail_at_submit(runner: DaskTaskRunner) -> None:
    @task(resources={"GPU": 2})
    def greedy() -> None: ...

    @flow(task_runner=runner)
    def submits() -> None:
        greedy.submit()

    with pytest.raises(InvalidOptionsError, match=r"asks for Dask resources GPU=2, but none"):
        submits()
