"""Calling a task: directly (blocking), `.submit` and `.map`, and argument errors."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest
from baton import (
    Future,
    State,
    StateType,
    UpstreamTaskError,
    flow,
    task,
)

RUNNERS = ["thread", "sync"]


def run_in_flow(runner: str, body: Callable[[], Any]) -> Any:
    return flow(task_runner=runner)(body)()


# -- direct calls ---------------------------------------------------------------------


def test_direct_call_outside_a_flow_blocks_and_returns_the_value() -> None:
    callers: list[int] = []

    @task
    def add(x: int, y: int) -> int:
        callers.append(threading.get_ident())
        return x + y

    assert add(2, 3) == 5
    assert add(x=1, y=1) == 2
    # it ran to its end before the call returned, in the calling thread
    assert callers == [threading.get_ident()] * 2


@pytest.mark.parametrize("runner", RUNNERS)
def test_direct_call_inside_a_flow_blocks_and_returns_the_value(runner: str) -> None:
    callers: list[int] = []

    @task
    def add(x: int, y: int) -> int:
        callers.append(threading.get_ident())
        return x + y

    def body() -> tuple[int, int]:
        return add(2, 3), threading.get_ident()

    value, flow_thread = run_in_flow(runner, body)
    assert value == 5
    assert callers == [flow_thread]


@pytest.mark.parametrize("runner", RUNNERS)
def test_direct_call_inside_a_task(runner: str) -> None:
    @task
    def square(x: int) -> int:
        return x * x

    @task
    def sum_of_squares(xs: list[int]) -> int:
        return sum(square(x) for x in xs)

    assert run_in_flow(runner, lambda: sum_of_squares.submit([1, 2, 3]).result()) == 14


def test_direct_call_raises_the_tasks_exception() -> None:
    raised: list[Exception] = []

    @task
    def fail(message: str) -> None:
        error = ValueError(message)
        raised.append(error)
        raise error

    with pytest.raises(ValueError, match=r"^bad row$") as caught:
        fail("bad row")
    assert caught.value is raised[0]


@pytest.mark.parametrize("runner", RUNNERS)
def test_direct_call_failure_inside_a_flow_fails_the_flow(runner: str) -> None:
    @task
    def fail() -> None:
        raise KeyError("missing")

    def body() -> None:
        fail()

    state = flow(task_runner=runner)(body)(return_state=True)
    assert state.is_failed()
    with pytest.raises(KeyError, match="missing"):
        state.result()


@pytest.mark.parametrize("runner", [None, *RUNNERS])
def test_direct_call_with_return_state(runner: str | None) -> None:
    @task
    def maybe_fail(fail: bool) -> str:
        if fail:
            raise ValueError("no")
        return "yes"

    def body() -> tuple[State, State]:
        return maybe_fail(False, return_state=True), maybe_fail(fail=True, return_state=True)

    ok, failed = body() if runner is None else run_in_flow(runner, body)
    assert isinstance(ok, State)
    assert ok.type is StateType.COMPLETED
    assert ok.result() == "yes"
    assert failed.type is StateType.FAILED
    assert failed.message == "ValueError: no"
    assert isinstance(failed.error, ValueError)


def test_direct_call_waits_for_wait_for() -> None:
    gate = threading.Event()
    order: list[str] = []
    seen_upstream_done: list[bool] = []

    @task
    def upstream() -> None:
        assert gate.wait(10)
        order.append("upstream")

    upstream_futures: list[Future[None]] = []

    @task
    def downstream() -> None:
        seen_upstream_done.append(upstream_futures[0].done())
        order.append("downstream")

    @flow(task_runner="thread")
    def pipeline() -> None:
        up = upstream.submit()
        upstream_futures.append(up)
        # The gate opens from another thread while this one is blocked in the call.
        opener = threading.Timer(0.05, gate.set)
        opener.start()
        try:
            downstream(wait_for=[up])  # type: ignore[call-arg]
        finally:
            opener.cancel()
            gate.set()

    pipeline()
    assert order == ["upstream", "downstream"]
    assert seen_upstream_done == [True]


@pytest.mark.parametrize("runner", RUNNERS)
def test_direct_call_with_failed_wait_for_does_not_run(runner: str) -> None:
    calls: list[int] = []

    @task
    def broken() -> None:
        raise OSError("disk full")

    @task
    def after() -> None:
        calls.append(1)

    def body() -> State:
        up = broken.submit()
        with pytest.raises(UpstreamTaskError, match="upstream task run 'broken-") as caught:
            after(wait_for=[up])
        assert isinstance(caught.value.__cause__, OSError)
        state = after(wait_for=[up], return_state=True)
        assert up.state.is_failed()
        return [state]  # type: ignore[return-value]

    [state] = run_in_flow(runner, body)
    assert state.is_failed()
    assert state.name == "UpstreamFailed"
    assert calls == []


def test_direct_call_resolves_futures_in_arguments() -> None:
    @task
    def one() -> int:
        return 1

    @task
    def total(values: dict[str, list[int]]) -> int:
        return sum(values["xs"])

    @flow(task_runner="thread")
    def pipeline() -> int:
        return total({"xs": [one.submit(), one.submit(), 5]})

    assert pipeline() == 7


def test_direct_call_of_an_async_task_returns_a_coroutine() -> None:
    @task
    async def double(x: int) -> int:
        await asyncio.sleep(0)
        return 2 * x

    @task
    async def boom() -> None:
        raise ValueError("async no")

    async def main() -> tuple[int, State]:
        value = await double(21)
        with pytest.raises(ValueError, match="async no"):
            await boom()
        return value, await boom(return_state=True)

    value, state = asyncio.run(main())
    assert value == 42
    assert state.is_failed()


@pytest.mark.parametrize("runner", RUNNERS)
def test_an_async_task_submits_maps_and_returns_async_runs_it_awaits(runner: str) -> None:
    # On `sync` the submitting thread is then the event loop that runs async tasks:
    # the submitted async runs go on that loop and run as the task awaits them (they
    # failed, "run synchronously from inside the event loop").
    @task
    async def inner(x: int) -> int:
        await asyncio.sleep(0.01)
        return x + 1

    @task
    async def submits() -> int:
        return await inner.submit(1)

    @task
    async def maps() -> list[int]:
        return [await future for future in inner.map([1, 2, 3])]

    @task
    async def returns_a_future() -> Any:
        return inner.submit(5)

    @flow(task_runner=runner)
    def body() -> tuple[int, list[int], int]:
        return (
            submits.submit().result(),
            maps.submit().result(),
            returns_a_future.submit().result(),
        )

    assert body() == (2, [2, 3, 4], 6)


def test_wait_for_must_be_a_list() -> None:
    @task
    def f() -> None: ...

    @task
    def g() -> None: ...

    future = f.submit()
    with pytest.raises(TypeError, match=r"wait_for must be a list of futures, such as"):
        g(wait_for=future)
    with pytest.raises(TypeError, match=r"wait_for must be a list of futures"):
        g.submit(wait_for=future)
    future.result()


# -- submit ---------------------------------------------------------------------------


@pytest.mark.parametrize("runner", [None, *RUNNERS])
def test_submit_returns_a_future_of_the_result(runner: str | None) -> None:
    @task
    def add(x: int, y: int = 10) -> int:
        return x + y

    def body() -> list[int]:
        futures = [add.submit(1), add.submit(1, y=2), add.submit(x=3)]
        assert all(isinstance(f, Future) for f in futures)
        return [f.result() for f in futures]

    assert (body() if runner is None else run_in_flow(runner, body)) == [11, 3, 13]


# -- argument errors at the call site -------------------------------------------------


def _counted() -> tuple[Any, list[int]]:
    calls: list[int] = []

    @task
    def load(path: str, *, limit: int = 10) -> int:
        calls.append(1)
        return limit

    return load, calls


CALLS: list[tuple[str, Callable[[Any], Any], str]] = [
    ("direct missing", lambda t: t(), r"^load\(\): missing a required argument: 'path'$"),
    ("direct extra", lambda t: t("a", colour=1), r"^load\(\): .*unexpected keyword.*'colour'"),
    ("direct too many", lambda t: t("a", "b"), r"^load\(\): too many positional arguments$"),
    ("submit missing", lambda t: t.submit(), r"^load\(\): missing a required argument: 'path'"),
    ("submit extra", lambda t: t.submit("a", colour=1), r"^load\(\): .*unexpected keyword"),
    ("submit too many", lambda t: t.submit("a", 5), r"^load\(\): too many positional"),
    ("map missing", lambda t: t.map(limit=[1, 2]), r"^load\.map\(\): missing a required arg"),
    ("map extra", lambda t: t.map(["a"], colour=[1]), r"^load\.map\(\): .*unexpected keyword"),
    ("map too many", lambda t: t.map(["a"], [1]), r"^load\.map\(\): too many positional"),
]


@pytest.mark.parametrize(("label", "call", "message"), CALLS, ids=[c[0] for c in CALLS])
@pytest.mark.parametrize("runner", [None, *RUNNERS])
def test_bad_arguments_raise_type_error_before_anything_runs(
    runner: str | None, label: str, call: Callable[[Any], Any], message: str
) -> None:
    load, calls = _counted()

    def body() -> str:
        with pytest.raises(TypeError, match=message):
            call(load)
        return "flow went on"

    assert (body() if runner is None else run_in_flow(runner, body)) == "flow went on"
    assert calls == []


@pytest.mark.parametrize("runner", RUNNERS)
def test_bad_arguments_inside_a_flow_leave_no_run_behind(runner: str) -> None:
    load, calls = _counted()

    def body() -> int:
        with pytest.raises(TypeError, match="load"):
            load.submit()
        return load.submit("p", limit=3).result()

    state = flow(task_runner=runner)(body)(return_state=True)
    assert state.is_completed()
    assert state.result() == 3
    assert calls == [1]
