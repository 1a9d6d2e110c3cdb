"""The contract a Prefect user relies on: each test is one program that went wrong."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any

import pytest
from baton import (
    FlowRunFailed,
    Future,
    InvalidOptionsError,
    State,
    StateType,
    allow_failure,
    current_task_run,
    flow,
    quote,
    tags,
    task,
)

RUNNERS = ["thread", "sync", "process"]


@task
def pair(x: int, **kw: int) -> tuple[int, dict[str, int]]:
    return x, kw


@task
def inc(x: int) -> int:
    return x + 1


@pytest.mark.parametrize("runner", RUNNERS)
def test_map_maps_iterables_given_through_var_keyword(runner: str) -> None:
    @flow(task_runner=runner)
    def pairs() -> Any:
        return pair.map([1, 2, 3], y=[4, 5, 6], z=0).result()

    assert pairs() == [(1, {"y": 4, "z": 0}), (2, {"y": 5, "z": 0}), (3, {"y": 6, "z": 0})]


@pytest.mark.parametrize("runner", RUNNERS)
def test_flow_returning_a_lazy_map_returns_every_result(runner: str) -> None:
    @flow(task_runner=runner)
    def lazy() -> Any:
        return inc.map(i for i in range(3))

    assert lazy() == [1, 2, 3]


@pytest.mark.parametrize("runner", RUNNERS)
def test_flow_returning_a_future_list_returns_a_list_of_results(runner: str) -> None:
    @flow(task_runner=runner)
    def mapped() -> Any:
        return inc.map([1, 2])

    result = mapped()
    assert type(result) is list
    assert result == [2, 3]


@task
def numbers() -> list[int]:
    return [1, 2, 3]


@pytest.mark.parametrize("runner", RUNNERS)
def test_map_over_a_future_maps_over_its_result(runner: str) -> None:
    @flow(task_runner=runner)
    def mapped() -> Any:
        return inc.map(numbers.submit()).result()

    assert mapped() == [2, 3, 4]


@task
def ident(x: Any) -> Any:
    return x


@task
def boom() -> int:
    raise ValueError("boom")


@pytest.mark.parametrize("runner", RUNNERS)
def test_map_over_allow_failure_of_futures_passes_failures_in(runner: str) -> None:
    @flow(task_runner=runner)
    def mapped() -> Any:
        futures = [inc.submit(1), boom.submit()]
        return ident.map(allow_failure(futures)).result()

    first, second = mapped()
    assert first == 2
    assert isinstance(second, ValueError)


@pytest.mark.parametrize("runner", RUNNERS)
def test_subflow_waits_for_the_futures_in_wait_for(runner: str) -> None:
    order: list[str] = []

    @flow
    def child() -> str:
        order.append("child")
        return "child done"

    @flow(task_runner=runner)
    def parent() -> Any:
        first = numbers.submit()
        result = child(wait_for=[first])
        order.append("parent")
        return first.state.is_completed(), result

    assert parent() == (True, "child done")
    assert order == ["child", "parent"]


@pytest.mark.parametrize("runner", RUNNERS)
def test_subflow_whose_wait_for_failed_ends_upstream_failed(runner: str) -> None:
    ran: list[str] = []

    @flow
    def child() -> None:
        ran.append("child")

    @flow(task_runner=runner)
    def parent() -> Any:
        state = child(wait_for=[boom.submit()], return_state=True)
        assert state.is_failed() and state.name == "UpstreamFailed"
        assert "boom" in state.message
        assert isinstance(state.error.__cause__, ValueError)
        return "checked"

    assert parent() == "checked"
    assert ran == []


@task
def returns_failed_state() -> State:
    return State.failed(ValueError("bad input"), "rejected the input")


attempts: list[int] = []


@task(retries=2)
def fails_by_state_then_completes() -> Any:
    attempts.append(1)
    if len(attempts) < 3:
        return State.failed(ValueError("not yet"))
    return "done"


@pytest.mark.parametrize("runner", RUNNERS)
def test_a_task_returning_a_state_ends_in_that_state(runner: str) -> None:
    @flow(task_runner=runner)
    def adopt() -> Any:
        future = returns_failed_state.submit()
        future.wait()
        state = future.state
        return state.type, state.message, type(state.error)

    assert adopt() == (StateType.FAILED, "rejected the input", ValueError)


def test_a_returned_failed_state_is_retried() -> None:
    attempts.clear()

    @flow(task_runner="thread")
    def retried() -> Any:
        return fails_by_state_then_completes()

    assert retried() == "done"
    assert len(attempts) == 3


def test_a_returned_non_final_state_fails_the_run() -> None:
    @task
    def pending() -> State:
        return State.pending()

    state = pending(return_state=True)
    assert state.is_failed()
    assert "PENDING" in state.message or "Pending" in state.message


@pytest.mark.parametrize("runner", RUNNERS)
def test_a_state_passed_as_an_argument_is_resolved_to_its_result(runner: str) -> None:
    @flow(task_runner=runner)
    def states() -> Any:
        done = inc(1, return_state=True)
        failed = boom(return_state=True)
        submitted = inc.submit([done][0]).result()
        called = ident({"x": done})
        downstream = inc.submit(failed).state
        allowed = ident.submit(allow_failure(failed)).result()
        return submitted, called, downstream.name, type(allowed)

    assert states() == (3, {"x": 2}, "UpstreamFailed", ValueError)


@pytest.mark.parametrize("name", ["wait_for", "return_state"])
def test_a_parameter_with_a_reserved_name_is_rejected_at_decoration(name: str) -> None:
    namespace: dict[str, Any] = {}
    exec(f"def fn(x, {name}=None): return x", namespace)
    with pytest.raises(InvalidOptionsError, match=f"parameter '{name}'.*Rename"):
        task(namespace["fn"])
    with pytest.raises(InvalidOptionsError, match=f"parameter '{name}'.*Rename"):
        flow(namespace["fn"])


def test_quote_unquote_gives_the_value_back() -> None:
    value = [1, 2]
    assert quote(value).unquote() is value


@pytest.mark.parametrize("runner", RUNNERS)
def test_a_flow_returning_a_quote_returns_the_quote(runner: str) -> None:
    @flow(task_runner=runner)
    def quoted() -> Any:
        return quote(inc.submit(1)), [quote("x")]

    whole, listed = quoted()
    assert type(whole) is quote and whole.unquote().result() == 2
    assert listed == [quote("x")]


@task(tags={"own"})
def my_tags() -> list[str] | None:
    run = current_task_run()  # a direct call runs here, on every runner
    return sorted(run.task.options.tags) if run is not None else None


def tags_of_run(future: Future[Any]) -> list[str]:
    future.result()
    return sorted(future.task_run.task.options.tags)


@pytest.mark.parametrize("runner", RUNNERS)
def test_tags_are_added_to_every_run_submitted_inside(runner: str) -> None:
    @flow(task_runner=runner)
    def tagged() -> Any:
        with tags("a", "b"):
            called = my_tags()
            submitted = my_tags.submit()
            with tags("c"):
                nested = my_tags.submit()
        outside = my_tags()
        return called, tags_of_run(submitted), tags_of_run(nested), outside

    called, submitted, nested, outside = tagged()
    assert called == submitted == ["a", "b", "own"]
    assert nested == ["a", "b", "c", "own"]
    assert outside == ["own"]


@task(tags={"own"})
def tags_of(x: Any) -> Any:
    return x


def test_tags_reach_mapped_runs() -> None:
    @flow(task_runner="thread")
    def mapped() -> Any:
        with tags("m"):
            return [tags_of_run(f) for f in tags_of.map([1, 2])]

    assert mapped() == [["m", "own"], ["m", "own"]]


class Scaler:
    factor = 10

    def __init__(self, offset: int) -> None:
        self.offset = offset

    @task
    def shift(self, x: int) -> int:
        return x + self.offset

    @task
    @classmethod
    def scale(cls, x: int) -> int:
        return x * cls.factor

    @task
    @staticmethod
    def negate(x: int) -> int:
        return -x


@pytest.mark.parametrize("runner", RUNNERS)
def test_method_tasks_support_call_submit_and_map(runner: str) -> None:
    @flow(task_runner=runner)
    def methods() -> Any:
        scaler = Scaler(1)
        return (
            scaler.shift(1),
            scaler.shift.submit(2).result(),
            scaler.shift.map([3, 4]).result(),
            Scaler.scale(1),
            scaler.scale.submit(2).result(),
            Scaler.scale.map([3]).result(),
            scaler.negate(1),
            Scaler.negate.submit(2).result(),
            scaler.negate.map([3]).result(),
        )

    assert methods() == (2, 3, [4, 5], 10, 20, [30], -1, -2, [-3])


@task
def countdown(n: int) -> Any:
    yield from range(n, 0, -1)


@task
async def acountdown(n: int) -> Any:
    for i in range(n, 0, -1):
        yield i


@task
def fails_midway() -> Any:
    yield 1
    raise ValueError("midway")


@pytest.mark.parametrize("runner", RUNNERS)
def test_generator_tasks_run_their_body_inside_the_run(runner: str) -> None:
    @flow(task_runner=runner)
    def generators() -> Any:
        failed = fails_midway.submit()
        failed.wait()
        return (
            countdown(3),
            countdown.submit(2).result(),
            acountdown.submit(2).result(),
            countdown.map([1, 2]).result(),
            failed.state.is_failed(),
        )

    assert generators() == ([3, 2, 1], [2, 1], [2, 1], [[1], [2, 1]], True)


@task
def returns_a_future(x: int) -> Any:
    return inc.submit(x)


@task
def returns_a_failing_future() -> Any:
    return boom.submit()


@task
async def async_returns_futures(x: int) -> Any:
    return inc.map([x, x + 1])


@pytest.mark.parametrize("runner", RUNNERS)
def test_a_returned_future_is_resolved_before_the_run_ends(runner: str) -> None:
    @flow(task_runner=runner)
    def returned() -> Any:
        failing = returns_a_failing_future.submit()
        failing.wait()
        error = failing.state.error
        return returns_a_future(1), returns_a_future.submit(2).result(), type(error)

    assert returned() == (2, 3, ValueError)


@pytest.mark.parametrize("runner", RUNNERS)
def test_an_async_task_returning_futures_gets_their_results(runner: str) -> None:
    @flow(task_runner=runner)
    def returned() -> Any:
        value = async_returns_futures.submit(1).result()
        return type(value).__name__, value

    assert returned() == ("list", [2, 3])


@pytest.mark.parametrize("runner", RUNNERS)
def test_runs_submitted_from_a_users_thread_belong_to_the_running_flow(runner: str) -> None:
    @flow(task_runner=runner)
    def pooled() -> Any:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            value = pool.submit(lambda: inc.submit(1).result()).result()
            pool.submit(boom.submit).result()  # unhandled: must fail this flow
        return value

    state = pooled(return_state=True)
    assert state.is_failed()
    assert isinstance(state.error, FlowRunFailed)
    assert "boom" in str(state.error)


def test_runs_submitted_from_a_users_thread_while_two_flows_run_is_an_error() -> None:
    both_running = threading.Barrier(3)
    release = threading.Event()

    @flow(task_runner="thread")
    def waiting() -> None:
        both_running.wait()
        release.wait()

    flows = [threading.Thread(target=waiting) for _ in range(2)]
    for thread in flows:
        thread.start()
    both_running.wait()  # both flows are inside their function now
    try:
        with pytest.raises(RuntimeError, match=r"contextvars\.copy_context\(\)\.run"):
            inc.submit(1)  # this thread belongs to neither flow
    finally:
        release.set()
        for thread in flows:
            thread.join()


@pytest.mark.parametrize("runner", RUNNERS)
def test_a_returned_completed_state_does_not_hide_an_unhandled_failure(runner: str) -> None:
    @flow(task_runner=runner)
    def hides() -> State:
        boom.submit()
        return State.completed("fine")

    state = hides(return_state=True)
    assert state.is_failed()
    assert isinstance(state.error, FlowRunFailed)


def test_an_async_subflow_waits_for_the_futures_in_wait_for() -> None:
    ran: list[str] = []

    @flow
    async def child() -> str:
        ran.append("child")
        return "done"

    @flow(task_runner="thread")
    async def parent() -> Any:
        ok = await child(wait_for=[inc.submit(1)])
        state = await child(wait_for=[boom.submit()], return_state=True)
        return ok, state.name

    assert asyncio.run(parent()) == ("done", "UpstreamFailed")
    assert ran == ["child"]
