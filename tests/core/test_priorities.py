"""Task priorities and resources on the built-in runners: options, per-call priorities,
the order runs waiting for a worker start in, and runs waiting for resources."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from baton import InvalidOptionsError, flow, get_runner, task
from baton.runners import AWAITING_RESOURCES, RunQueue
from baton.testing._rendezvous import Rendezvous
from baton.testing._tasks import hold

# -- options ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"priority": -1}, "priority: must be a whole number >= 0"),
        ({"priority": "high"}, "priority: must be a whole number >= 0"),
        ({"priority": 1.5}, "priority: must be a whole number >= 0"),
        ({"priority": True}, "priority: must be a whole number >= 0"),
        ({"resources": {"GPU": -1}}, "'GPU' needs an amount > 0, not -1"),
        ({"resources": {"GPU": "one"}}, "'GPU' needs an amount > 0, not 'one'"),
        ({"resources": {"": 1}}, "resource names must be non-empty strings"),
        ({"resources": ["GPU"]}, "must map resource names to amounts"),
        ({"priorty": 1}, "priorty: not an option"),
    ],
)
def test_bad_priorities_and_resources_fail_at_decoration(
    options: dict[str, Any], expected: str
) -> None:
    with pytest.raises(InvalidOptionsError, match="Invalid options for a task") as caught:
        task(**options)
    assert expected in str(caught.value)


def test_priority_and_resources_are_options() -> None:
    @task(priority=3, resources={"GPU": 1, "memory": 4e9})
    def train() -> None: ...

    assert train.options.priority == 3
    assert train.options.resources == {"GPU": 1.0, "memory": 4e9}
    assert train.with_options(priority=0).options.priority == 0


def test_a_per_call_priority_is_checked() -> None:
    @task
    def step() -> None: ...

    @flow(task_runner="sync")
    def bad() -> None:
        step.submit(priority=-2)

    with pytest.raises(InvalidOptionsError, match=r"step.submit\(\): priority must be a whole"):
        bad()


def test_a_function_that_takes_priority_receives_it() -> None:
    @task
    def ranked(priority: int) -> int:
        return priority

    @flow(task_runner="thread")
    def both() -> tuple[int, list[int]]:
        return ranked.submit(priority=7).result(), ranked.map(priority=[1, 2]).result()

    assert both() == (7, [1, 2])


# -- the order runs waiting for a worker start in ---------------------------------------


def test_run_queue_orders_by_priority_then_arrival() -> None:
    queue: RunQueue[str] = RunQueue()
    for item, priority in [("a", 0), ("b", 5), ("c", 0), ("d", 5), ("e", 9)]:
        queue.append(item, priority)
    queue.appendleft("again", 5)
    assert list(queue) == ["e", "again", "b", "d", "a", "c"]
    assert queue.peek() == "e"
    assert [queue.popleft() for _ in range(len(queue))] == [*list("e"), "again", "b", "d", "a", "c"]
    assert not queue
    with pytest.raises(IndexError):
        queue.popleft()


@pytest.mark.parametrize("runner", ["thread", "process"])
def test_runs_waiting_for_a_worker_start_by_priority(tmp_path: Any, runner: str) -> None:
    """One worker, busy: runs submitted meanwhile start highest priority first, and in
    submission order within one priority (per call, and from the task's option)."""
    rv = Rendezvous(tmp_path)
    urgent = hold.with_options(priority=5)

    @flow(task_runner=get_runner(runner, max_workers=1))
    def ordered() -> list[tuple[str, int]]:
        blocker = hold.submit(rv, "blocker", "go")
        rv.wait("started-blocker")
        waiting = {
            "low-1": hold.submit(rv, "low-1"),
            "high-1": hold.submit(rv, "high-1", priority=9),
            "low-2": hold.submit(rv, "low-2"),
            "mid": urgent.submit(rv, "mid"),
            "high-2": hold.submit(rv, "high-2", priority=9),
        }
        rv.signal("go")
        blocker.result()
        return sorted(((name, f.result()[0]) for name, f in waiting.items()), key=lambda x: x[1])

    assert [name for name, _ in ordered()] == ["high-1", "high-2", "mid", "low-1", "low-2"]


def test_a_map_takes_a_priority(tmp_path: Any) -> None:
    rv = Rendezvous(tmp_path)

    @flow(task_runner=get_runner("thread", max_workers=1))
    def ordered() -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        blocker = hold.submit(rv, "blocker", "go")
        rv.wait("started-blocker")
        low = hold.map(rv, ["a", "b"])
        high = hold.map(rv, ["c", "d"], priority=4)
        rv.signal("go")
        blocker.result()
        return low.result(), high.result()

    low, high = ordered()
    assert max(start for start, _ in high) < min(start for start, _ in low)


# -- resources ----------------------------------------------------------------------------


@pytest.mark.parametrize("runner", ["thread", "process"])
def test_a_run_waiting_for_resources_reads_awaiting_resources(tmp_path: Any, runner: str) -> None:
    rv = Rendezvous(tmp_path)
    gpu = hold.with_options(resources={"GPU": 1})

    @flow(task_runner=get_runner(runner, resources={"GPU": 2}))
    def waits() -> tuple[str | None, list[tuple[int, int]]]:
        holders = [gpu.submit(rv, name, "go") for name in ("a", "b")]
        rv.wait("started-a", "started-b")
        third = gpu.submit(rv, "c")
        name = third.state.name
        rv.signal("go")
        return name, [f.result() for f in [*holders, third]]

    name, ((_, a_end), (_, b_end), (c_start, _)) = waits()
    assert name == AWAITING_RESOURCES
    assert c_start >= min(a_end, b_end)


def test_runs_needing_different_resources_do_not_wait_for_each_other(tmp_path: Any) -> None:
    rv = Rendezvous(tmp_path)
    gpu = hold.with_options(resources={"GPU": 1})
    disk = hold.with_options(resources={"disk": 1}, priority=0)

    @flow(task_runner=get_runner("thread", resources={"GPU": 1, "disk": 1}))
    def both() -> None:
        first = gpu.submit(rv, "gpu-1", "go")
        rv.wait("started-gpu-1")
        waiting = gpu.submit(rv, "gpu-2", priority=5)  # waits for the GPU
        disk.submit(rv, "disk").result()  # starts though a higher priority waits
        rv.signal("go")
        first.result()
        waiting.result()

    both()


def test_a_large_request_is_not_starved_by_small_ones(tmp_path: Any) -> None:
    """Once a run waits for two GPUs, later runs asking for one wait behind it."""
    rv = Rendezvous(tmp_path)
    one = hold.with_options(resources={"GPU": 1})
    two = hold.with_options(resources={"GPU": 2})

    @flow(task_runner=get_runner("thread", resources={"GPU": 2}))
    def queue() -> tuple[tuple[int, int], tuple[int, int]]:
        one.submit(rv, "first", "go")
        rv.wait("started-first")
        big = two.submit(rv, "big")
        small = one.submit(rv, "small")
        hold.submit(rv, "free").result()
        assert not rv.is_set("started-small")
        rv.signal("go")
        return big.result(), small.result()

    (_big_start, big_end), (small_start, _) = queue()
    assert small_start >= big_end


@pytest.mark.parametrize("runner", ["thread", "process", "sync"])
def test_requests_no_capacity_can_satisfy_fail_at_submit(runner: str) -> None:
    @task(resources={"GPU": 3})
    def greedy() -> None: ...

    @task(resources={"TPU": 1})
    def exotic() -> None: ...

    @flow(task_runner=get_runner(runner, resources={"GPU": 2}))
    def submits() -> list[str]:
        messages = []
        for t in (greedy, exotic):
            with pytest.raises(InvalidOptionsError) as caught:
                t.submit()
            messages.append(str(caught.value))
        return messages

    over, unknown = submits()
    assert "GPU=3: more than the 2 task runner" in over
    assert "Ask for at most 2" in over
    assert "declares no resource 'TPU' (it declares: GPU=2)" in unknown


def test_a_runner_without_capacities_names_what_to_declare() -> None:
    @task(resources={"GPU": 1})
    def train() -> None: ...

    @flow(task_runner="thread")
    def submits() -> None:
        train.submit()

    with pytest.raises(InvalidOptionsError, match=r"resources=\{'GPU': 1\}"):
        submits()


@pytest.mark.parametrize("capacities", [{"GPU": 0}, {"GPU": "2"}, ["GPU"]])
def test_bad_capacities_fail_when_the_runner_is_made(capacities: Any) -> None:
    with pytest.raises(InvalidOptionsError, match="Invalid options for task runner 'thread'"):
        get_runner("thread", resources=capacities)


def test_a_run_cancelled_while_it_waits_for_resources_never_runs(tmp_path: Any) -> None:
    rv = Rendezvous(tmp_path)
    gpu = hold.with_options(resources={"GPU": 1})

    @flow(task_runner=get_runner("thread", resources={"GPU": 1}))
    def cancels() -> bool:
        first = gpu.submit(rv, "first", "go")
        rv.wait("started-first")
        waiting = gpu.submit(rv, "second")
        cancelled = waiting.cancel()
        after = gpu.submit(rv, "third")
        rv.signal("go")
        first.result()
        after.result()
        return cancelled

    assert cancels()
    assert not rv.is_set("started-second")


def test_resources_are_held_until_the_run_is_final_across_retries(tmp_path: Any) -> None:
    rv = Rendezvous(tmp_path)
    attempts: list[int] = []
    lock = threading.Lock()

    @task(resources={"GPU": 1}, retries=2)
    def flaky() -> str:
        with lock:
            attempts.append(time.time_ns())
            if len(attempts) < 3:
                raise RuntimeError("again")
        return "done"

    gpu = hold.with_options(resources={"GPU": 1})

    @flow(task_runner=get_runner("thread", resources={"GPU": 1}))
    def retried() -> tuple[str, tuple[int, int]]:
        first = flaky.submit()
        other = gpu.submit(rv, "other")
        return first.result(), other.result()

    result, (other_start, _) = retried()
    assert result == "done"
    assert other_start > attempts[-1]


def test_runs_a_task_submits_do_not_wait_for_what_it_holds() -> None:
    @task(resources={"GPU": 1})
    def leaf(x: int) -> int:
        return x + 1

    @task(resources={"GPU": 1})
    def parent(x: int) -> list[int]:
        return leaf.map([x, x + 1]).result()

    @flow(task_runner=get_runner("thread", resources={"GPU": 1}))
    def nested() -> list[int]:
        return parent.submit(1).result()

    assert nested() == [2, 3]


def test_a_runner_reads_what_a_run_asks_for() -> None:
    from baton.runners import TaskRunner

    seen: list[tuple[int, dict[str, float], dict[str, float]]] = []

    class Recording(TaskRunner):
        name = "recording"

        def submit(self, run: Any) -> None:
            seen.append((run.priority, run.resources, run.call.resources))
            run.execute()

    @task(priority=2, resources={"GPU": 1})
    def train() -> None: ...

    @flow(task_runner=Recording())
    def asks() -> None:
        train.submit().result()
        train.submit(priority=7).result()

    asks()
    assert seen == [(2, {"GPU": 1.0}, {"GPU": 1.0}), (7, {"GPU": 1.0}, {"GPU": 1.0})]
