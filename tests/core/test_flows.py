"""Flows: final states, waiting for everything, unhandled failures, nested and async flows."""

from __future__ import annotations

import asyncio
import threading

import pytest
from baton import (
    Flow,
    FlowRunFailed,
    State,
    StateType,
    flow,
    task,
    wait,
)
from baton._runners.thread import ThreadRunner

RUNNERS = ["thread", "sync"]


@task
def double(x: int) -> int:
    return 2 * x


@task
def fail(message: str = "boom") -> None:
    raise ValueError(message)


@pytest.mark.parametrize("runner", RUNNERS)
def test_flow_returns_its_value_and_resolves_returned_futures(runner: str) -> None:
    @flow(task_runner=runner)
    def pipeline() -> dict[str, object]:
        return {"one": double.submit(1), "many": [double.submit(2), double.submit(3)]}

    assert pipeline() == {"one": 2, "many": [4, 6]}


def test_flow_name_defaults_to_function_name_with_dashes() -> None:
    @flow
    def run_text_analysis() -> None:
        pass

    assert isinstance(run_text_analysis, Flow)
    assert run_text_analysis.name == "run-text-analysis"


@pytest.mark.parametrize("runner", RUNNERS)
def test_flow_waits_for_every_submitted_run(runner: str) -> None:
    finished: list[int] = []
    release = threading.Event()
    if runner == "sync":
        release.set()  # the sync runner runs each task inside submit

    @task
    def slow(i: int) -> None:
        release.wait(5)
        finished.append(i)

    @flow(task_runner=runner)
    def fire_and_forget() -> str:
        for i in range(5):
            slow.submit(i)
        release.set()
        return "returned before the runs ended"

    assert fire_and_forget() == "returned before the runs ended"
    assert sorted(finished) == [0, 1, 2, 3, 4]


def test_unhandled_task_failure_fails_the_flow_naming_the_run() -> None:
    @flow
    def careless() -> int:
        fail.submit("nobody looked")
        return 1

    with pytest.raises(FlowRunFailed) as caught:
        careless()
    message = str(caught.value)
    assert "1 task run(s) failed and nothing in the flow handled them" in message
    assert "fail-" in message and "nobody looked" in message
    assert isinstance(caught.value.__cause__, ValueError)


@pytest.mark.parametrize("look", ["result", "state", "wait"])
def test_a_failure_looked_at_does_not_fail_the_flow(look: str) -> None:
    @flow
    def careful() -> str:
        future = fail.submit()
        if look == "result":
            assert isinstance(future.result(raise_on_failure=False), ValueError)
        elif look == "state":
            future.wait()
            assert future.state.is_failed()
        else:
            wait([future])
        return "fine"

    assert careful() == "fine"


def test_a_failure_consumed_downstream_is_reported_once_through_the_downstream() -> None:
    @flow
    def chain() -> None:
        double.submit(fail.submit("upstream broke"))

    state = chain(return_state=True)
    assert state.is_failed()
    message = str(state.error)
    assert "1 task run(s) failed" in message
    assert "UpstreamFailed" in message and "double-" in message


def test_flow_exception_fails_the_flow_and_is_raised() -> None:
    @flow
    def explodes() -> None:
        raise KeyError("inside the flow")

    with pytest.raises(KeyError, match="inside the flow"):
        explodes()
    state = explodes(return_state=True)
    assert state.type is StateType.FAILED
    assert isinstance(state.error, KeyError)


def test_flow_exception_cancels_runs_that_had_not_started() -> None:
    started = threading.Event()
    release = threading.Event()
    ran: list[int] = []

    @task
    def blocker() -> None:
        started.set()
        release.wait(5)

    @task
    def later(i: int) -> None:
        ran.append(i)

    futures = []

    @flow(task_runner=ThreadRunner(max_workers=1))
    def interrupted() -> None:
        futures.append(blocker.submit())
        started.wait(5)
        futures.extend(later.submit(i) for i in range(3))
        release.set()
        raise RuntimeError("stop here")

    with pytest.raises(RuntimeError):
        interrupted()
    states = [f._state.type for f in futures[1:]]
    assert ran == [] or len(ran) < 3
    assert StateType.CANCELLED in states
    assert all(s in (StateType.CANCELLED, StateType.COMPLETED) for s in states)


def test_returning_a_state_sets_the_flow_state() -> None:
    @flow
    def decides() -> State:
        return State.failed(ValueError("chosen"), message="the flow chose to fail")

    state = decides(return_state=True)
    assert state.is_failed() and state.message == "the flow chose to fail"


@pytest.mark.parametrize("returned", [State.pending(), State.running()])
def test_returning_a_non_final_state_fails_the_flow_saying_so(returned: State) -> None:
    seen: list[State] = []

    @flow(on_failure=[lambda flow, run, state: seen.append(state)])
    def undecided() -> State:
        return returned

    state = undecided(return_state=True)
    assert state.is_failed()
    assert isinstance(state.error, TypeError)
    assert "returned the non-final state" in str(state.error)
    assert seen == [state]
    with pytest.raises(TypeError, match="return a final state"):
        undecided()


def test_returning_a_failed_future_fails_the_flow() -> None:
    @flow
    def hands_back() -> object:
        return fail.submit("returned")

    with pytest.raises(ValueError, match="returned"):
        hands_back()


def test_flow_arguments_are_checked_at_the_call() -> None:
    @flow
    def needs(x: int) -> int:
        return x

    with pytest.raises(TypeError, match=r"needs\(\): missing a required argument: 'x'"):
        needs()


def test_nested_flow_runs_as_a_child_flow_run_with_its_own_runner() -> None:
    seen: list[str] = []

    @flow(task_runner="sync")
    def child(x: int) -> int:
        seen.append(threading.current_thread().name)
        return double(x) + double.submit(x).result()

    @flow(task_runner="thread")
    def parent() -> list[int]:
        return [child(1), child(2)]

    assert parent() == [4, 8]
    assert len(seen) == 2


def test_flow_run_name_template() -> None:
    from baton import hookimpl
    from baton._plugins import plugin_manager

    names: list[str] = []

    class Recorder:
        @hookimpl
        def flow_run_started(self, flow_run: object) -> None:
            names.append(flow_run.name)  # type: ignore[attr-defined]

    recorder = Recorder()
    plugin_manager().register(recorder)
    try:

        @flow(flow_run_name="etl-{day}")
        def etl(day: str) -> None:
            pass

        etl("monday")

        @flow
        def anonymous() -> None:
            pass

        anonymous()
    finally:
        plugin_manager().unregister(recorder)
    assert names[0] == "etl-monday"
    adjective, animal = names[1].split("-")
    assert adjective.isalpha() and animal.isalpha()


def test_async_flow_with_gathered_async_tasks_interleaves(
    capsys: pytest.CaptureFixture[str],
) -> None:
    @task
    async def print_values(values: object) -> None:
        for value in values:  # type: ignore[attr-defined]
            await asyncio.sleep(0.01)
            print(value, end=" ")

    @flow
    async def async_flow() -> None:
        await print_values([1, 2])
        await asyncio.gather(print_values("abcd"), print_values("6789"))

    asyncio.run(async_flow())
    assert capsys.readouterr().out.split() == "1 2 a 6 b 7 c 8 d 9".split()


def test_async_flow_submits_and_awaits_futures() -> None:
    @task
    async def triple(x: int) -> int:
        await asyncio.sleep(0)
        return 3 * x

    @flow
    async def mixed() -> list[int]:
        futures = [triple.submit(1), double.submit(2)]
        return [await f for f in futures] + double.map([5]).result()

    assert asyncio.run(mixed()) == [3, 4, 10]


def test_async_flow_fails_on_unhandled_failure() -> None:
    @flow
    async def careless() -> None:
        fail.submit()

    with pytest.raises(FlowRunFailed):
        asyncio.run(careless())


def test_flow_options_are_validated() -> None:
    from baton import InvalidOptionsError

    with pytest.raises(InvalidOptionsError, match="task_runner"):
        flow(task_runner=42)  # type: ignore[call-overload]
    with pytest.raises(InvalidOptionsError, match="not an option"):
        flow(retries=3)  # type: ignore[call-overload]


def test_with_options_changes_the_runner() -> None:
    @flow(task_runner="thread")
    def where() -> str:
        return double.submit(1).task_run.scope.runner.name

    assert where() == "thread"
    assert where.with_options(task_runner="sync")() == "sync"


def test_flow_hooks_get_the_final_state() -> None:
    calls: list[tuple[str, str, str]] = []

    def done(flow_obj: Flow[..., object], flow_run: object, state: State) -> None:
        calls.append(("completion", flow_obj.name, repr(state)))

    def failed(flow_obj: Flow[..., object], flow_run: object, state: State) -> None:
        calls.append(("failure", flow_obj.name, state.type.value))

    def broken(*_: object) -> None:
        raise RuntimeError("hook bug")

    @flow(on_completion=[broken, done], on_failure=failed)
    def hooked(ok: bool) -> int:
        if not ok:
            raise ValueError("no")
        return 1

    assert hooked(True) == 1
    with pytest.raises(ValueError):
        hooked(False)
    assert calls == [("completion", "hooked", "Completed()"), ("failure", "hooked", "FAILED")]
