"""Native dependencies: a runner that wires upstream runs into its own engine's graph.

The runner here stands in for Dask or Ray: it keeps its own "native futures"
(concurrent futures holding each run's State), passes them to downstream calls,
and reports completed runs lazily so that results are fetched only when read.
"""

from __future__ import annotations

import concurrent.futures as cf
import pickle
from typing import Any

import pytest
from baton import (
    Capability,
    Future,
    State,
    TaskRun,
    TaskRunner,
    UpstreamTaskError,
    allow_failure,
    flow,
    task,
)


class GraphRunner(TaskRunner):
    name = "graph"
    capabilities = frozenset({Capability.NATIVE_DEPENDENCIES})

    def __init__(self) -> None:
        self.native: dict[int, cf.Future[State]] = {}
        self.loads = 0
        self.shipped: list[Any] = []

    def on_start(self) -> None:
        self.pool = cf.ThreadPoolExecutor(4)

    def on_shutdown(self, wait: bool) -> None:
        self.pool.shutdown(wait=wait)

    def submit(self, run: TaskRun) -> None:
        call, upstreams = run.native_call()
        payload = pickle.loads(pickle.dumps(call))  # it must travel
        self.shipped.append(payload)
        inputs = [self.native.get(u.task_run_id) for u in upstreams]
        foreign = [u for u, native in zip(upstreams, inputs, strict=True) if native is None]

        def execute() -> State:
            values = [
                native.result() if native is not None else upstream.state
                for native, upstream in zip(inputs, upstreams, strict=True)
            ]
            return payload(*values)

        native = self.pool.submit(execute)
        self.native[run.id] = native
        assert all(u.done() for u in foreign), "the core waits for foreign upstream runs"

        def report(done: cf.Future[State]) -> None:
            state = done.result()
            if state.is_completed():

                def load() -> Any:
                    self.loads += 1
                    return state.result()

                run.set_state(State.completed_lazily(load))
            else:
                run.set_state(state)

        native.add_done_callback(report)


@task
def inc(x: int) -> int:
    return x + 1


@task
def total(values: list[int], extra: dict[str, int]) -> int:
    return sum(values) + sum(extra.values())


@task
def boom(x: int) -> int:
    raise ValueError(f"boom {x}")


@task
def describe(value: object) -> str:
    return type(value).__name__


@task
def echo(value: object) -> object:
    return value


def test_upstreams_are_passed_natively_and_results_fetched_lazily() -> None:
    runner = GraphRunner()

    @flow(task_runner=runner)
    def graph() -> int:
        first = inc.submit(1)
        second = inc.submit(first)
        futures = inc.map([first, second])
        result = total.submit(futures, {"a": second})
        assert not isinstance(result, int)
        return result.result()

    with runner:
        assert graph() == (2 + 1) + (3 + 1) + 3
        # only the final result was read by the flow: the others stayed where they ran
        assert runner.loads == 1
    assert len(runner.shipped) == 5


def test_upstream_failure_ends_downstream_upstream_failed_on_the_worker() -> None:
    @flow(task_runner=GraphRunner())
    def failing() -> tuple[State, State, str]:
        bad = boom.submit(1)
        after = inc.submit(bad)
        allowed = describe.submit(allow_failure(bad))
        bad.wait()
        after.wait()
        return after.state, bad.state, allowed.result()

    after, bad, allowed = failing()
    assert bad.is_failed()
    assert after.name == "UpstreamFailed"
    assert isinstance(after.error, UpstreamTaskError)
    assert "boom-" in str(after.error)
    assert isinstance(after.error.__cause__, ValueError)
    assert allowed == "ValueError"


def test_foreign_upstreams_are_awaited_by_the_core() -> None:
    @task
    def slow() -> int:
        return 41

    @flow(task_runner="thread")
    def make() -> Future[int]:
        return slow.submit()

    made: list[Future[int]] = []

    @flow(task_runner="thread")
    def keep() -> None:
        made.append(slow.submit())

    keep()

    @flow(task_runner=GraphRunner())
    def consume() -> int:
        return inc.submit(made[0]).result()

    assert consume() == 42


def test_lazy_state_pickles_with_its_value() -> None:
    calls = []
    state = State.completed_lazily(lambda: calls.append(1) or "data")
    copy = pickle.loads(pickle.dumps(state))
    assert copy.result() == "data"
    assert state.result() == "data"
    assert calls == [1]


@pytest.mark.parametrize("runner", ["thread", "sync"])
def test_other_runners_never_see_futures(runner: str) -> None:
    seen: list[object] = []

    class Spy(TaskRunner):
        name = "spy"

        def submit(self, run: TaskRun) -> None:
            seen.extend(run.args)
            run.execute()

    @flow(task_runner=Spy())
    def plain() -> int:
        return inc.submit(inc.submit(1)).result()

    assert plain() == 3
    assert seen == [1, 2]


def test_a_failure_consumed_downstream_is_reported_once() -> None:
    @flow(task_runner=GraphRunner())
    def chain() -> None:
        inc.submit(boom.submit(1))

    state = chain(return_state=True)
    assert "1 task run(s) failed" in str(state.error)
    assert "UpstreamFailed" in str(state.error)


def test_futures_as_dict_keys_are_filled_in() -> None:
    @flow(task_runner=GraphRunner())
    def keyed() -> dict[object, object]:
        first = inc.submit(1)
        return echo.submit({first: "key", "value": first, (first,): [first]}).result()

    assert keyed() == {2: "key", "value": 2, (2,): [2]}


def test_a_failure_passed_in_through_allow_failure_counts_as_handled() -> None:
    @flow(task_runner=GraphRunner())
    def tolerant() -> str:
        return describe.submit(allow_failure(boom.submit(1))).result()

    assert tolerant() == "ValueError"
