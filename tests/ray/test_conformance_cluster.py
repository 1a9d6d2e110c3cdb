"""The `ray` runner on a cluster started with ``ray start --head`` on 127.0.0.1: the
conformance kit with the runner given the cluster's address, and the runner
connecting (and disconnecting) by itself."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import ray
import ray_tasks as rt
from baton import flow, get_runner
from baton.testing import RunnerConformance
from baton_ray import RayTaskRunner
from raysetup import Cluster, runtime_env


@pytest.fixture(scope="class")
def connected(cluster: Cluster) -> Iterator[Cluster]:
    """This process connected to the cluster once for the class: each runner given its
    address uses that connection (Ray connects a process to one cluster at a time)."""
    ray.init(address=cluster.address, runtime_env=runtime_env(), log_to_driver=False)
    try:
        yield cluster
    finally:
        ray.shutdown()


class TestRayOnACluster(RunnerConformance):
    conformance_level = 3

    @pytest.fixture
    def runner(self, connected: Cluster) -> RayTaskRunner:
        return RayTaskRunner(address=connected.address)

    @pytest.fixture
    def runner_name(self, connected: Cluster, monkeypatch: pytest.MonkeyPatch) -> str:
        """A new process selects "ray" and, through RAY_ADDRESS, joins this cluster."""
        monkeypatch.setenv("RAY_ADDRESS", connected.address)
        return "ray"


def test_the_runner_connects_by_address_and_leaves_the_cluster_running(
    cluster: Cluster,
) -> None:
    assert not ray.is_initialized()
    runner = get_runner(
        "ray",
        address=cluster.address,
        init_kwargs={"runtime_env": runtime_env(), "log_to_driver": False},
    )

    @flow(task_runner=runner)
    def on_the_cluster() -> tuple[list[int], set[int]]:
        pids = rt.pid.map(range(4)).result()
        return pids, {p.pid for p in cluster.processes()}

    pids, cluster_pids = on_the_cluster()
    assert os.getpid() not in pids
    assert set(pids) <= cluster_pids, "the cluster's workers ran them"
    assert not ray.is_initialized(), "the runner disconnects what it connected"
    assert any("raylet" in " ".join(p.cmdline()) for p in cluster.processes()), (
        "and leaves the cluster running"
    )


def test_auto_finds_the_running_cluster(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_ADDRESS", cluster.address)

    @flow(task_runner=RayTaskRunner(address="auto", init_kwargs={"runtime_env": runtime_env()}))
    def found() -> int:
        return rt.identity.submit(3).result()

    assert found() == 3
    assert not ray.is_initialized()
