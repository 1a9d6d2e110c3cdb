"""Batches of small runs (`baton.runners`): the sizing policy, the queue that packs ready
runs into batches, and `run_batch`, which runs each run of a batch as it would run alone.

Pure logic: durations are fed to the sizer by hand; nothing here is timed."""

from __future__ import annotations

from typing import Any

import pytest
from baton import InvalidOptionsError, State, StateType, flow, task
from baton.runners import (
    Batch,
    BatchQueue,
    BatchSizer,
    RunCall,
    batch_size_of,
    run_batch,
)

# -- the sizing policy --------------------------------------------------------------------


def test_runs_of_an_unknown_task_go_one_by_one_until_one_was_measured() -> None:
    sizer = BatchSizer()
    assert sizer.estimate("t") is None
    assert sizer.size("t", ready=10_000, free=4) == 1


def test_tiny_runs_batch_deeply_up_to_the_largest_size() -> None:
    sizer = BatchSizer(target_seconds=0.05, max_size=1000)
    sizer.observe("t", [0.00001] * 100)
    assert sizer.size("t", ready=100_000, free=4) == 1000
    sizer = BatchSizer(target_seconds=0.05, max_size=1000)
    sizer.observe("t", [0.001] * 10)
    assert sizer.size("t", ready=100_000, free=4) == 50


def test_long_runs_go_one_by_one() -> None:
    sizer = BatchSizer(alone_seconds=0.1)
    sizer.observe("t", [0.25])
    assert sizer.size("t", ready=16, free=2) == 1
    sizer.observe("t", [0.1] * 5)
    assert sizer.size("t", ready=16, free=2) == 1


def test_ready_runs_are_spread_over_the_free_slots() -> None:
    sizer = BatchSizer(max_size=1000)
    sizer.observe("t", [0.00001])
    # 10 ready runs, 4 free slots: no slot is left without a run.
    assert sizer.size("t", ready=10, free=4) == 3
    assert sizer.size("t", ready=3, free=4) == 1
    assert sizer.size("t", ready=5000, free=2) == 1000
    assert sizer.size("t", ready=0, free=2) == 0


def test_a_fixed_size_overrides_the_policy_but_still_spreads() -> None:
    sizer = BatchSizer()
    assert sizer.size("t", ready=100, free=1, fixed=7) == 7
    assert sizer.size("t", ready=100, free=50, fixed=7) == 2
    sizer.observe("t", [1.0])
    assert sizer.size("t", ready=100, free=1, fixed=7) == 7


def test_the_estimate_follows_the_durations_of_each_key_apart() -> None:
    sizer = BatchSizer(weight=0.5, max_size=10_000)
    sizer.observe("a", [0.01])
    sizer.observe("b", [0.0001])
    assert sizer.estimate("a") == pytest.approx(0.01)
    assert sizer.estimate("b") == pytest.approx(0.0001)
    # A run turned slow: the estimate moves halfway per observation, a batch of n counts n.
    sizer.observe("a", [0.03])
    assert sizer.estimate("a") == pytest.approx(0.02)
    sizer.observe("a", [0.2, 0.2])
    assert sizer.estimate("a") == pytest.approx(0.2)
    assert sizer.size("a", ready=100, free=1) == 1
    sizer.observe("a", [])
    assert sizer.estimate("a") == pytest.approx(0.2)


def test_the_sizer_refuses_nonsense_settings() -> None:
    with pytest.raises(ValueError, match="max_size"):
        BatchSizer(max_size=0)
    with pytest.raises(ValueError, match="target_seconds"):
        BatchSizer(target_seconds=0)
    with pytest.raises(ValueError, match="weight"):
        BatchSizer(weight=2)


# -- the queue ----------------------------------------------------------------------------


def test_the_queue_fills_free_slots_and_sizes_from_what_it_learned() -> None:
    queue: BatchQueue[int] = BatchQueue(slots=2)
    for i in range(100):
        queue.put(i, "t")
    first = queue.take()
    # Nothing known yet: one run per slot, in order, and no more than the slots.
    assert [b.items for b in first] == [[0], [1]]
    assert queue.take() == []
    assert len(queue) == 98 and queue.out == 2
    queue.done(first[0], [0.0001])
    second = queue.take()
    assert len(second) == 1
    # 98 ready, one free slot: the policy's size (500) is cut to what is ready.
    assert second[0].items == list(range(2, 100))
    assert len(queue) == 0


def test_runs_put_alone_or_with_size_one_go_alone_and_first() -> None:
    queue: BatchQueue[str] = BatchQueue(slots=10)
    queue.sizer.observe("t", [0.00001])
    for name in "abcd":
        queue.put(name, "t")
    queue.put("again", "t", alone=True)
    queue.put("single", "u", fixed=1)
    batches = queue.take()
    assert [b.items for b in batches][:2] == [["again"], ["single"]]
    assert sorted(x for b in batches[2:] for x in b.items) == ["a", "b", "c", "d"]


def test_a_discarded_run_is_not_taken() -> None:
    queue: BatchQueue[str] = BatchQueue(slots=4)
    queue.put("a", "t")
    queue.put("b", "t", alone=True)
    assert queue.discard("a") and queue.discard("b")
    assert not queue.discard("a")
    assert queue.take() == [] and len(queue) == 0


def test_everything_is_taken_when_the_runner_stops() -> None:
    queue: BatchQueue[int] = BatchQueue(slots=1)
    for i in range(5):
        queue.put(i, "t")
    taken = queue.take(everything=True)
    assert sorted(i for b in taken for i in b.items) == [0, 1, 2, 3, 4]


def test_runs_given_back_go_first_in_their_order_and_keep_their_priority() -> None:
    queue: BatchQueue[str] = BatchQueue(slots=3)
    queue.sizer.observe("t", [0.00001])
    for name in ("low1", "low2", "low3"):
        queue.put(name, "t")
    queue.put("high", "t", priority=9)
    queue.put("again", "t", alone=True)
    taken = queue.take()
    assert [b.items for b in taken] == [["again"], ["high"], ["low1", "low2", "low3"]]
    # Room for one more run only: the low batch keeps its first, the rest goes back.
    queue.give_back(taken[2], keep=1)
    assert taken[2].items == ["low1"]
    for batch in reversed(taken[:2]):
        queue.give_back(batch)
    assert queue.out == 1 and len(queue) == 4
    queue.done(taken[2], [0.00001])
    again = queue.take()
    assert [b.items for b in again] == [["again"], ["high"], ["low2", "low3"]]


def test_the_queue_follows_the_workers_it_is_told_of() -> None:
    queue: BatchQueue[int] = BatchQueue(slots=1)
    asked: list[int] = []

    def three() -> int:
        asked.append(3)
        return 3

    queue.follow_workers(three, per_worker=2, every=3600)
    assert queue.slots == 6
    queue.follow_workers(three, per_worker=2, every=3600)  # asked an hour ago at most
    assert asked == [3]

    def unreachable() -> int:
        raise ConnectionError("the scheduler is gone")

    queue.follow_workers(unreachable, every=0)
    assert queue.slots == 6  # what was known stays
    queue.follow_workers(lambda: 0, per_worker=2, every=0)
    assert queue.slots == 2  # never fewer than one worker's worth


def test_kinds_take_turns() -> None:
    queue: BatchQueue[str] = BatchQueue(slots=3)
    for key in ("a", "b"):
        queue.sizer.observe(key, [0.00001])
    for i in range(4):
        queue.put(f"a{i}", "a")
        queue.put(f"b{i}", "b")
    keys = [b.key for b in queue.take()]
    assert "a" in keys and "b" in keys


def test_after_a_crash_only_the_run_that_was_executing_crashes() -> None:
    batch = Batch("t", ["a", "b", "c", "d"])
    assert batch.after_crash(2) == ("c", ["a", "b", "d"])
    # Nothing known of which was executing: every run goes again (alone), none crashed.
    assert batch.after_crash(None) == (None, ["a", "b", "c", "d"])


# -- the task option ----------------------------------------------------------------------


def test_a_task_sets_its_batch_size_and_the_runner_default_applies_otherwise() -> None:
    @task(batch_size=1)
    def alone() -> None: ...

    @task
    def any_size() -> None: ...

    assert batch_size_of(alone, 50) == 1
    assert batch_size_of(any_size, 50) == 50
    assert batch_size_of(any_size) is None
    assert batch_size_of(any_size.with_options(batch_size=8)) == 8
    with pytest.raises(InvalidOptionsError, match="batch_size"):
        task(batch_size=0)


# -- running a batch ----------------------------------------------------------------------


@task
def divide(x: int) -> float:
    return 10 / x


@task
def ends_with(how: str) -> str:
    if how == "interrupt":
        raise KeyboardInterrupt
    if how == "exit":
        raise SystemExit(3)
    return how


_attempts: dict[int, int] = {}


@task(retries=2)
def flaky(key: int) -> int:
    _attempts[key] = _attempts.get(key, 0) + 1
    if _attempts[key] < 2:
        raise ValueError("first attempt fails")
    return key


def _calls(t: Any, values: list[Any]) -> list[RunCall]:
    return [RunCall(t, 1000 + i, f"{t.name}-{i}", (v,), {}) for i, v in enumerate(values)]


def test_a_failing_run_in_a_batch_fails_alone_and_the_others_complete() -> None:
    results = run_batch(_calls(divide, [1, 0, 5]))
    states = [r.state for r, _ in results]
    assert [s.type for s in states] == [StateType.COMPLETED, StateType.FAILED, StateType.COMPLETED]
    assert states[0].result() == 10 and states[2].result() == 2
    assert isinstance(states[1].error, ZeroDivisionError)
    assert all(seconds >= 0 for _, seconds in results)


def test_a_base_exception_in_a_batch_crashes_only_its_run() -> None:
    results = run_batch(_calls(ends_with, ["a", "interrupt", "b", "exit", "c"]))
    assert [r.state.type for r, _ in results] == [
        StateType.COMPLETED,
        StateType.CRASHED,
        StateType.COMPLETED,
        StateType.CRASHED,
        StateType.COMPLETED,
    ]


def test_each_run_of_a_batch_keeps_its_retries_and_reports_its_states() -> None:
    _attempts.clear()
    heard: list[tuple[int, str]] = []
    results = run_batch(
        _calls(flaky, [1, 2]), on_state=lambda i, s: heard.append((i, s.name or s.type.value))
    )
    assert [r.state.result() for r, _ in results] == [1, 2]
    assert [r.attempt for r, _ in results] == [1, 1]
    assert heard.count((0, "Running")) == 2 and heard.count((1, "Running")) == 2
    assert (0, "Retrying") in heard and (1, "Retrying") in heard


def test_a_batch_leaves_retries_to_the_runner_when_asked() -> None:
    _attempts.clear()
    results = run_batch(_calls(flaky, [7]), attempts=[1], retries="runner")
    result = results[0][0]
    assert result.retry is not None and result.retry.attempt == 2


def test_upstream_states_of_each_run_are_taken_apart() -> None:
    from baton.runners import Upstream

    failed = State.failed(ValueError("upstream broke"))
    call = RunCall(divide, 7, "divide-7", (Upstream(0, "up-0", False),), {})
    results = run_batch([call, call], [[State.completed(2)], [failed]])
    assert results[0][0].state.result() == 5
    assert results[1][0].state.name == "UpstreamFailed"


def test_the_sync_runner_still_runs_a_task_with_a_batch_size() -> None:
    @task(batch_size=3)
    def double(x: int) -> int:
        return 2 * x

    @flow(task_runner="sync")
    def doubled() -> list[int]:
        return double.map(range(4)).result()

    assert doubled() == [0, 2, 4, 6]
