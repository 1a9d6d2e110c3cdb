"""`wait`, `as_completed` and `FutureList`: waiting on many runs at once."""

from __future__ import annotations

import re
import threading
from typing import Any

import pytest
from baton import (
    DoneAndNotDone,
    Future,
    FutureList,
    StateType,
    as_completed,
    flow,
    task,
    wait,
)
from baton._runners.thread import ThreadRunner

GATE_SECONDS = 10


@task
def hold(started: threading.Event, release: threading.Event, value: object = None) -> object:
    """Signal that the run started, then stay RUNNING until the test releases it."""
    started.set()
    if not release.wait(GATE_SECONDS):
        raise TimeoutError("the test never released this run")
    return value


@task
def inc(x: int) -> int:
    return x + 1


@task
def fail_on(x: int, bad: int) -> int:
    if x == bad:
        raise ValueError(f"bad item {x}")
    return x


@task
def release_then_return(release: threading.Event, value: object) -> object:
    """Wait for the test to let this run finish: the test decides the completion order."""
    if not release.wait(GATE_SECONDS):
        raise TimeoutError("the test never released this run")
    return value


# -- wait ----------------------------------------------------------------------------


def test_wait_returns_done_and_not_done() -> None:
    futures = [inc.submit(i) for i in range(5)]
    result = wait(futures)
    assert isinstance(result, DoneAndNotDone)
    done, not_done = result
    assert done == set(futures)
    assert result.done is done
    assert not_done == set()
    assert result.not_done is not_done
    assert sorted(f.result() for f in done) == [1, 2, 3, 4, 5]


def test_wait_with_a_timeout_splits_finished_from_held_runs() -> None:
    started, release = threading.Event(), threading.Event()
    quick = [inc.submit(i) for i in range(3)]
    held = hold.submit(started, release, "held")
    try:
        wait(quick)
        assert started.wait(GATE_SECONDS)
        done, not_done = wait([*quick, held], timeout=0.02)
        assert done == set(quick)
        assert not_done == {held}
        assert held.state.type is StateType.RUNNING
    finally:
        release.set()
    done, not_done = wait([*quick, held], timeout=GATE_SECONDS)
    assert done == {*quick, held}
    assert not_done == set()


def test_wait_with_zero_timeout_does_not_block() -> None:
    started, release = threading.Event(), threading.Event()
    held = hold.submit(started, release, None)
    try:
        done, not_done = wait([held], timeout=0)
        assert done == set()
        assert not_done == {held}
    finally:
        release.set()
    held.result(timeout=GATE_SECONDS)


def test_wait_on_nothing() -> None:
    assert wait([]) == (set(), set())


@pytest.mark.parametrize("call", [wait, lambda futures: list(as_completed(futures))])
def test_wait_and_as_completed_say_what_they_got_instead_of_futures(call: Any) -> None:
    @flow
    def body() -> list[str]:
        future = inc.submit(1)
        messages = []
        for bad in (future, [future, 2], 3):
            with pytest.raises(TypeError) as info:
                call(bad)
            messages.append(str(info.value))
        future.result()
        return messages

    single, item, not_iterable = body()
    assert "got the single future" in single and "pass [future]" in single
    assert "item 1 is int 2" in item
    assert "an iterable of futures" in not_iterable and "int 3" in not_iterable


def test_wait_puts_failed_runs_in_done() -> None:
    futures = [fail_on.submit(i, 1) for i in range(3)]
    done, not_done = wait(futures)
    assert done == set(futures)
    assert not_done == set()
    assert [f.state.type for f in futures] == [
        StateType.COMPLETED,
        StateType.FAILED,
        StateType.COMPLETED,
    ]


def test_wait_counts_as_handling_failures_in_a_flow() -> None:
    @flow
    def handled() -> list[StateType]:
        futures = fail_on.map([0, 1, 2], 1)
        done, _ = wait(futures)
        return sorted(f.state.type for f in done)

    assert handled() == [StateType.COMPLETED, StateType.COMPLETED, StateType.FAILED]


def test_wait_inside_a_task_on_a_single_worker_does_not_deadlock() -> None:
    @task
    def outer(n: int) -> list[int]:
        done, not_done = wait(inc.map(range(n)))
        assert not not_done
        return sorted(f.result() for f in done)

    @flow(task_runner=ThreadRunner(max_workers=1))
    def body() -> list[int]:
        return outer.submit(4).result()

    assert body() == [1, 2, 3, 4]


# -- as_completed --------------------------------------------------------------------


@pytest.mark.parametrize("order", [(2, 0, 1), (0, 1, 2), (1, 2, 0)])
def test_as_completed_yields_in_completion_order(order: tuple[int, int, int]) -> None:
    releases = [threading.Event() for _ in order]
    futures = [release_then_return.submit(releases[i], i) for i in range(len(order))]
    seen: list[int] = []
    try:
        iterator = as_completed(futures, timeout=GATE_SECONDS)
        releases[order[0]].set()
        for future in iterator:
            seen.append(future.result())
            if len(seen) < len(order):
                # Only now may the next one finish: the completion order is forced.
                releases[order[len(seen)]].set()
    finally:
        for release in releases:
            release.set()
    assert seen == list(order)


def test_as_completed_raises_timeout_with_unfinished_runs() -> None:
    started, release = threading.Event(), threading.Event()
    quick = [inc.submit(i) for i in range(2)]
    held = hold.submit(started, release, None)
    yielded: list[Future[object]] = []
    try:
        wait(quick)
        with pytest.raises(TimeoutError, match=re.escape("1 of 3 futures still unfinished")):
            yielded.extend(as_completed([*quick, held], timeout=0.05))
        assert set(yielded) == set(quick)
        assert not held.done()
    finally:
        release.set()
    held.result(timeout=GATE_SECONDS)


def test_as_completed_with_finished_futures_and_duplicates() -> None:
    futures = [inc.submit(i) for i in range(4)]
    wait(futures)
    yielded = list(as_completed([*futures, futures[0]]))
    assert len(yielded) == 4
    assert set(yielded) == set(futures)


def test_as_completed_on_nothing() -> None:
    assert list(as_completed([])) == []


def test_as_completed_counts_as_handling_failures_in_a_flow() -> None:
    @flow
    def handled() -> int:
        return sum(1 for f in as_completed(fail_on.map([0, 1, 2], 0)) if f.state.is_failed())

    assert handled() == 1


# -- FutureList ----------------------------------------------------------------------


def test_future_list_result_is_in_input_order() -> None:
    releases = [threading.Event() for _ in range(3)]
    futures = release_then_return.map(releases, ["a", "b", "c"])
    assert isinstance(futures, FutureList)
    # Let the last input finish first: results still come back in input order.
    for release in reversed(releases):
        release.set()
    assert futures.result() == ["a", "b", "c"]


def test_future_list_result_raises_the_first_failure() -> None:
    futures = fail_on.map([0, 1, 2, 3], 2)
    with pytest.raises(ValueError, match="bad item 2"):
        futures.result()
    values = futures.result(raise_on_failure=False)
    assert values[:2] == [0, 1]
    assert isinstance(values[2], ValueError)
    assert values[3] == 3


def test_future_list_result_timeout() -> None:
    started, release = threading.Event(), threading.Event()
    futures = FutureList([inc.submit(1), hold.submit(started, release, "held")])
    try:
        with pytest.raises(TimeoutError, match=re.escape(repr(futures[1].name))):
            futures.result(timeout=0.05)
    finally:
        release.set()
    assert futures.result(timeout=GATE_SECONDS) == [2, "held"]


def test_future_list_wait_and_states() -> None:
    started, release = threading.Event(), threading.Event()
    futures = FutureList([inc.submit(1), fail_on.submit(1, 1), hold.submit(started, release)])
    try:
        assert started.wait(GATE_SECONDS)
        _, not_done = futures.wait(timeout=0.02)
        assert not_done == {futures[2]}
        assert futures.states[2].type is StateType.RUNNING
    finally:
        release.set()
    result = futures.wait(timeout=GATE_SECONDS)
    assert isinstance(result, DoneAndNotDone)
    assert result.done == set(futures)
    assert result.not_done == set()
    assert [s.type for s in futures.states] == [
        StateType.COMPLETED,
        StateType.FAILED,
        StateType.COMPLETED,
    ]
    assert [s.name for s in futures.states] == ["Completed", "Failed", "Completed"]


def test_map_returns_a_future_list() -> None:
    futures = inc.map(range(3))
    assert isinstance(futures, FutureList)
    assert all(isinstance(f, Future) for f in futures)
    assert futures.result() == [1, 2, 3]
