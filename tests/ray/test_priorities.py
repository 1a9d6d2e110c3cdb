"""Priorities and resources on the `ray` runner: runs the driver holds back (beyond
`max_pending`) go to Ray by priority; requests beyond the cluster fail at submit."""

from __future__ import annotations

import pytest
from baton import InvalidOptionsError, flow, task
from baton.testing._rendezvous import Rendezvous
from baton.testing._tasks import hold
from baton_ray import RayTaskRunner

pytestmark = pytest.mark.usefixtures("ray_local")


def test_runs_held_back_go_to_ray_by_priority(rv: Rendezvous) -> None:
    @flow(task_runner=RayTaskRunner(max_pending=1))
    def ordered() -> list[str]:
        blocker = hold.submit(rv, "blocker", "go")
        rv.wait("started-blocker")
        waiting = {
            "low": hold.submit(rv, "low"),
            "high": hold.submit(rv, "high", priority=9),
            "mid": hold.with_options(priority=5).submit(rv, "mid"),
        }
        rv.signal("go")
        blocker.result()
        starts = {name: future.result()[0] for name, future in waiting.items()}
        return sorted(starts, key=starts.__getitem__)

    assert ordered() == ["high", "mid", "low"]


def test_more_than_the_cluster_has_fails_at_submit() -> None:
    @task(resources={"GPU": 64})
    def greedy() -> None: ...

    @flow(task_runner=RayTaskRunner())
    def submits() -> None:
        greedy.submit()

    with pytest.raises(InvalidOptionsError, match=r"GPU=64 \(the cluster has 0\)"):
        submits()
