"""Concurrency and rate limits on the `ray` runner, on a local Ray started for the module
(see the Limits page): runs recorded their own start and end."""

from __future__ import annotations

from typing import Any

import pytest
from baton import flow
from baton.testing._rendezvous import Rendezvous
from baton.testing._suite_limits import most_at_once
from baton.testing._tasks_limits import (
    LIMIT_TAG,
    busy_interval,
    concurrency_block,
    held_interval,
    limited_parent,
    map_limited,
    signal_free,
)
from baton_ray import RayTaskRunner

pytestmark = pytest.mark.usefixtures("ray_local")


def test_eight_tagged_runs_run_at_most_two_at_once() -> None:
    @flow(concurrency_limits={LIMIT_TAG: 2}, task_runner=RayTaskRunner())
    def limited() -> list[tuple[float, float]]:
        return busy_interval.map(range(8)).result()

    intervals = limited()
    assert len(intervals) == 8
    assert most_at_once(intervals) <= 2, sorted(intervals)


def test_untagged_runs_are_not_held_back(rv: Rendezvous) -> None:
    @flow(concurrency_limits={LIMIT_TAG: 1}, task_runner=RayTaskRunner())
    def mixed() -> list[str]:
        holder = held_interval.submit(rv, "untagged-ran")
        queued = held_interval.submit(rv, "untagged-ran")
        free = signal_free.submit(rv, "untagged-ran")
        return [holder.result(), queued.result(), free.result()]

    assert mixed() == ["held", "held", "untagged-ran"]


def test_nested_tagged_runs_under_a_limit_on_the_workers() -> None:
    @flow(concurrency_limits={LIMIT_TAG: 1}, task_runner=RayTaskRunner())
    def parents() -> list[int]:
        return limited_parent.map([1, 2]).result()

    assert parents() == [20, 30]

    @flow(concurrency_limits={LIMIT_TAG: 1}, task_runner=RayTaskRunner())
    def submitted_on_workers() -> list[Any]:
        return [i for runs in map_limited.map([3, 3], 0.2).result() for i in runs]

    intervals = submitted_on_workers()
    assert len(intervals) == 6
    assert most_at_once(intervals) == 1, sorted(intervals)


def test_concurrency_blocks_hold_across_the_worker_processes() -> None:
    @flow(concurrency_limits={"db": 1}, task_runner=RayTaskRunner())
    def blocks() -> list[Any]:
        return concurrency_block.map("db", range(6), 0.2).result()

    runs = blocks()
    assert len({pid for _, _, pid in runs}) >= 2
    assert most_at_once([(start, end) for start, end, _ in runs]) == 1
