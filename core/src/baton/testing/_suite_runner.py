"""Conformance tests: lifecycle, concurrency, nested and async runs, pickling, scale, and
random task graphs checked against a sequential reference."""

from __future__ import annotations

import functools
import os
import pickle
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import HypothesisDeprecationWarning

from baton import (
    Capability,
    RunnerClosedError,
    State,
    StateType,
    TaskRunner,
    allow_failure,
    flow,
    task,
    unmapped,
)
from baton.testing._rendezvous import WAIT_SECONDS
from baton.testing._spec import conformance
from baton.testing._tasks import (
    KitError,
    UnpicklableError,
    add,
    add_all,
    analyze_texts,
    async_meet,
    combine,
    combine_values,
    countdown,
    echo,
    inc,
    is_tracer,
    make_lock,
    make_tracer,
    meet,
    raise_unpicklable,
    stoppable,
    where,
)

if TYPE_CHECKING:
    from baton import Future
    from baton.testing._kit import Kit

__all__ = ["RunnerTests"]

TEXTS = [
    "Just visited #Paris! Contact me at visitor@example.com #travel #vacation",
    "Working on my new #project. Reach out at developer@example.com if interested!",
    "Happy to announce our company event #celebration #milestone email: events@company.org",
]
ANALYSIS = {
    "count_words": [9, 11, 10],
    "extract_emails": [["visitor@example.com"], ["developer@example.com"], ["events@company.org"]],
}

# Deterministic examples and no example database: a kit run in a plugin's CI is the
# same every time and writes nothing into the plugin's tree. One runner serves all the
# examples of a test, and every subclass runs the same test methods.
_PROPERTY = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.differing_executors,
    ],
)


def _runner_threads_may_use_random(test: Callable[..., None]) -> Callable[..., None]:
    """Hypothesis warns when the global `random` state changes while it draws an example,
    taking it for a strategy that uses `random`. Here the runner under test is running
    (a cluster's background threads use `random`), so that change is not the strategy's."""

    @functools.wraps(test)
    def tolerant(*args: Any, **kwargs: Any) -> None:
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore",
                message="Do not use the `random` module inside strategies",
                category=HypothesisDeprecationWarning,
            )
            test(*args, **kwargs)

    return tolerant


@dataclass(frozen=True)
class Node:
    """One run of a random task graph: `combine(op, const, inputs)`."""

    op: str
    const: int
    parents: tuple[int, ...]
    allowed: tuple[bool, ...]  # per parent: passed through allow_failure(...)
    after: tuple[int, ...]  # wait_for
    shape: str  # how the parents' futures are nested: "list", "tuple" or "dict"


def _nest(shape: str, items: list[Any]) -> Any:
    if shape == "tuple":
        return (tuple(items),)
    if shape == "dict":
        return {f"k{i:02d}": [item] for i, item in enumerate(items)}
    return [items]


@st.composite
def _graphs(draw: st.DrawFn) -> list[Node]:
    nodes: list[Node] = []
    for i in range(draw(st.integers(1, 12))):
        earlier = st.integers(0, max(i - 1, 0))
        parents = tuple(draw(st.lists(earlier, max_size=min(i, 3), unique=True)))
        allowed = tuple(draw(st.lists(st.booleans(), min_size=len(parents), max_size=len(parents))))
        after = tuple(draw(st.lists(earlier, max_size=min(i, 2), unique=True)))
        op = draw(st.sampled_from(["sum", "sum", "max", "neg", "fail"]))
        const = draw(st.integers(-5, 5))
        shape = draw(st.sampled_from(["list", "tuple", "dict"]))
        nodes.append(Node(op, const, parents, allowed, after, shape))
    return nodes


def _reference(nodes: list[Node]) -> list[tuple[str, Any]]:
    """What each run must end as, computed one node after the other in plain Python:
    ("completed", value), ("failed", None), or ("upstream", the upstream indices that
    did not complete)."""
    outcomes: list[tuple[str, Any]] = []
    for node in nodes:
        blocking = {p for p, ok in zip(node.parents, node.allowed, strict=True) if not ok} | set(
            node.after
        )
        blocking = {p for p in blocking if outcomes[p][0] != "completed"}
        if blocking:
            outcomes.append(("upstream", blocking))
            continue
        items = [
            outcomes[p][1] if outcomes[p][0] == "completed" else KitError("failed upstream")
            for p in node.parents
        ]
        try:
            value = combine_values(node.op, node.const, _nest(node.shape, items))
        except KitError:
            outcomes.append(("failed", None))
        else:
            outcomes.append(("completed", value))
    return outcomes


def _status(runner: TaskRunner) -> tuple[bool, bool]:
    """(started, closed), read afresh (type checkers keep properties narrowed)."""
    return runner.started, runner.closed


class RunnerTests:
    # -- lifecycle -----------------------------------------------------------------------

    @conformance(manages_runner=True)
    def test_start_and_shutdown_can_be_called_twice(self, kit: Kit) -> None:
        runner = kit.runner
        assert runner.start() is runner, "rule: start() returns the runner"
        runner.start()
        assert _status(runner) == (True, False), "rule: start() twice is harmless"
        runner.shutdown()
        runner.shutdown()
        assert _status(runner) == (False, True), "rule: shutdown() twice is harmless"
        with pytest.raises(RunnerClosedError):
            runner.start()

    @conformance(manages_runner=True)
    def test_shutdown_of_a_runner_never_started(self, kit: Kit) -> None:
        kit.runner.shutdown()
        assert kit.runner.closed, "rule: shutdown() of a runner never started closes it"
        with pytest.raises(RunnerClosedError):
            kit.runner.start()

    @conformance(manages_runner=True)
    def test_the_runner_works_as_a_context_manager(self, kit: Kit) -> None:
        with kit.runner as entered:
            assert entered is kit.runner and entered.started, "rule: `with runner` starts it"
            assert kit.run(lambda: inc.submit(1).result()) == 2
            assert kit.runner.started, "rule: a flow leaves a runner it did not start running"
        assert kit.runner.closed, "rule: leaving `with runner` shuts it down"

    @conformance(manages_runner=True)
    def test_a_flow_runs_on_its_own_copy_of_an_unstarted_runner(self, kit: Kit) -> None:
        first = kit.run(lambda: inc.map([1, 2]).result())
        second = kit.run(lambda: inc.map([3, 4]).result())
        assert (first, second) == ([2, 3], [4, 5]), "rule: one runner serves many flow runs"
        assert not kit.runner.started and not kit.runner.closed, (
            "rule: a flow given an unstarted runner runs on a copy and leaves it unstarted"
        )

    @conformance(manages_runner=True)
    def test_duplicate_is_a_new_runner_of_the_same_kind(self, kit: Kit) -> None:
        copy = kit.runner.duplicate()
        assert copy is not kit.runner and type(copy) is type(kit.runner)
        assert copy.name == kit.runner.name and copy.capabilities == kit.runner.capabilities
        assert not copy.started and not copy.closed, "rule: duplicate() is new and unstarted"
        with copy:
            result = flow(task_runner=copy)(lambda: inc.submit(41).result())()
        assert result == 42
        assert not kit.runner.started and not kit.runner.closed, (
            "rule: using a duplicate leaves the original untouched"
        )

    @conformance()
    def test_submitting_after_shutdown_is_a_clear_error(self, kit: Kit) -> None:
        def body() -> int:
            first = inc.submit(1).result()
            kit.runner.shutdown()
            with pytest.raises(RunnerClosedError, match="shut down"):
                inc.submit(2)
            return first

        assert kit.run(body) == 2

    @conformance(concurrent=True)
    def test_shutdown_waits_for_running_work(self, kit: Kit) -> None:
        rv = kit.rv
        runner = kit.runner

        def release_once_closing() -> None:
            while not runner.closed and not rv.is_set("__abort__"):
                threading.Event().wait(0.005)
            rv.signal("release-running")

        def body() -> tuple[bool, State]:
            running = stoppable.submit(rv, "running", "finished")
            rv.wait("started-running")
            releaser = threading.Thread(target=release_once_closing, daemon=True)
            releaser.start()
            runner.shutdown(wait=True)
            releaser.join(WAIT_SECONDS)
            return running.done(), running.state

        done, state = kit.run(body)
        assert done, "rule: shutdown(wait=True) returns only once running work has finished"
        assert state.is_completed() and state.result() == "finished", (
            f"rule: shutdown(wait=True) lets running work finish; got {state!r}"
        )

    # -- concurrency ---------------------------------------------------------------------

    @conformance(concurrent=True)
    def test_two_submitted_runs_are_in_flight_at_once(self, kit: Kit) -> None:
        rv = kit.rv
        parties = ("left", "right")

        def body() -> list[str]:
            futures = [meet.submit(rv, name, parties) for name in parties]
            return [f.result() for f in futures]

        assert kit.run(body) == ["left", "right"], "rule: submitted runs run concurrently"

    @conformance(concurrent=True)
    def test_runs_of_a_map_are_in_flight_at_once(self, kit: Kit) -> None:
        rv = kit.rv
        parties = ("first", "second")
        result = kit.run(lambda: meet.map(rv, parties, unmapped(parties)).result())
        assert result == ["first", "second"], "rule: the runs of a .map() run concurrently"

    @conformance(requires=(Capability.ASYNC,), concurrent=True)
    def test_two_async_runs_are_in_flight_at_once(self, kit: Kit) -> None:
        rv = kit.rv
        parties = ("x", "y")
        result = kit.run(lambda: async_meet.map(rv, parties, unmapped(parties), "").result())
        assert result == ["x", "y"], "rule: async runs run concurrently"

    @conformance(
        requires=(Capability.ASYNC,),
        concurrent=True,
        excludes={
            Capability.PROCESSES: "async runs in worker processes may take a worker each",
        },
    )
    def test_many_async_runs_share_threads(self, kit: Kit) -> None:
        rv = kit.rv
        parties = tuple(f"a{i}" for i in range(20))

        def body() -> tuple[list[str], int]:
            before = threading.active_count()
            futures = async_meet.map(rv, parties, unmapped(parties), "counted")
            rv.wait(*(f"arrived-{p}" for p in parties))
            during = threading.active_count()
            rv.signal("counted")
            return futures.result(), during - before

        results, extra_threads = kit.run(body)
        assert results == list(parties)
        assert extra_threads < len(parties), (
            f"rule: many async runs in flight at once do not need a thread each; "
            f"{len(parties)} of them took {extra_threads} more threads"
        )

    # -- nested --------------------------------------------------------------------------

    @conformance(requires=(Capability.NESTED,))
    def test_a_task_submits_and_waits_for_other_tasks(self, kit: Kit) -> None:
        assert kit.run(lambda: countdown.submit(6).result()) == 6, (
            "rule: a task may submit a task and wait for it, levels deep, without deadlock"
        )

    @conformance(requires=(Capability.NESTED,))
    def test_nested_maps_in_more_runs_than_workers(self, kit: Kit) -> None:
        results = kit.run(lambda: analyze_texts.map([TEXTS] * 8).result())
        assert results == [ANALYSIS] * 8, (
            "rule: tasks that map other tasks and wait on them never deadlock, also with "
            "more of them than the runner has workers"
        )

    # -- pickling ------------------------------------------------------------------------

    @conformance()
    def test_closures_and_lambdas_as_tasks_and_arguments(self, kit: Kit) -> None:
        offset = 10

        @task
        def shifted(x: int) -> int:
            return x + offset

        @task
        def apply(fn: Any, x: int) -> Any:
            return fn(x)

        def body() -> tuple[list[int], int]:
            return shifted.map([1, 2]).result(), apply.submit(lambda v: v * 7, 3).result()

        assert kit.run(body) == ([11, 12], 21), (
            "rule: closures and lambdas work as tasks and as arguments"
        )

    @conformance(requires=(Capability.PROCESSES,))
    def test_runs_execute_in_another_process(self, kit: Kit) -> None:
        pids = {pid for pid, _ in kit.run(lambda: where.map(range(4)).result())}
        assert os.getpid() not in pids, (
            "rule: a runner that declares PROCESSES runs tasks outside the calling process"
        )

    @conformance(requires=(Capability.PROCESSES,))
    def test_an_argument_that_cannot_be_pickled_is_a_clear_error(self, kit: Kit) -> None:
        def body() -> BaseException | None:
            try:
                future = echo.submit(threading.Lock())
            except Exception as exc:
                return exc
            future.wait(WAIT_SECONDS)
            return future.state.error

        error = kit.run(body)
        assert error is not None, "rule: an unpicklable argument is an error, at submit or run"
        text = str(error).lower()
        assert "echo" in text and ("pickl" in text or "serializ" in text), (
            f"rule: the error names the task and says what could not be pickled: {error!r}"
        )

    @conformance(requires=(Capability.PROCESSES,))
    def test_a_result_that_cannot_be_pickled_fails_the_run(self, kit: Kit) -> None:
        def body() -> State:
            future = make_lock.submit()
            future.wait(WAIT_SECONDS)
            return future.state

        state = kit.run(body)
        assert state.is_failed(), f"rule: an unpicklable result fails the run: {state!r}"
        text = str(state.message).lower()
        assert "pickl" in text or "serializ" in text, state.message

    @conformance(requires=(Capability.PROCESSES,))
    def test_an_exception_that_cannot_be_pickled_still_fails_the_run(self, kit: Kit) -> None:
        with pytest.raises(TypeError):  # what the task raises really cannot travel
            pickle.dumps(UnpicklableError("cannot travel"))

        def body() -> State:
            future = raise_unpicklable.submit("cannot travel")
            future.wait(WAIT_SECONDS)
            return future.state

        state = kit.run(body)
        assert state.is_failed(), (
            f"rule: a task raising an unpicklable exception still ends FAILED: {state!r}"
        )
        shown = f"{state.message} {state.error}"
        assert "UnpicklableError" in shown and "cannot travel" in shown, (
            f"rule: the failure keeps the exception's type name and message: {shown!r}"
        )

    # -- cluster runners -----------------------------------------------------------------

    @conformance(requires=(Capability.CONNECT,), manages_runner=True)
    def test_a_connecting_runner_accepts_urls(self, kit: Kit) -> None:
        cls = type(kit.runner)
        assert cls.url_schemes, (
            "rule: a runner that declares CONNECT names the URL schemes it accepts "
            "(url_schemes = ('myscheme',))"
        )
        inherited = getattr(TaskRunner.from_url, "__func__", None)
        assert getattr(cls.from_url, "__func__", None) is not inherited, (
            "rule: a runner that declares CONNECT builds itself from a URL: it implements "
            "from_url()"
        )

    @conformance(requires=(Capability.NATIVE_DEPENDENCIES,))
    def test_upstream_results_go_from_worker_to_worker(self, kit: Kit) -> None:
        def body() -> bool:
            return is_tracer.submit(make_tracer.submit(kit.rv)).result()

        assert kit.run(body), "rule: a downstream run receives its upstream's result"
        assert not kit.rv.is_set(f"unpickled-in-{os.getpid()}"), (
            "rule: with NATIVE_DEPENDENCIES an upstream's result goes from worker to worker; "
            "here it was unpickled in the flow's own process"
        )

    # -- scale ---------------------------------------------------------------------------

    @conformance()
    def test_ten_thousand_runs_of_a_map_complete(self, kit: Kit) -> None:
        results = kit.run(lambda: inc.map(range(10_000)).result())
        assert results == list(range(1, 10_001)), "rule: a 10,000-run map completes, in order"

    # -- properties ----------------------------------------------------------------------

    @conformance()
    @_runner_threads_may_use_random
    @_PROPERTY
    @given(
        xs=st.lists(st.integers(-1000, 1000), max_size=30),
        c=st.integers(-5, 5),
        ys=st.lists(st.integers(-9, 9), max_size=4),
    )
    def test_random_maps_match_a_sequential_reference(
        self, kit: Kit, xs: list[int], c: int, ys: list[int]
    ) -> None:
        def body() -> tuple[list[int], list[int]]:
            return add.map(xs, c).result(), add_all.map(xs, unmapped(ys)).result()

        added, summed = kit.run(body)
        assert added == [x + c for x in xs], "rule: .map() matches a plain loop"
        assert summed == [x + sum(ys) for x in xs]

    @conformance()
    @_runner_threads_may_use_random
    @_PROPERTY
    @given(nodes=_graphs())
    def test_random_task_graphs_match_a_sequential_reference(
        self, kit: Kit, nodes: list[Node]
    ) -> None:
        def body() -> list[tuple[str, State]]:
            futures: list[Future[int]] = []
            for node in nodes:
                items = [
                    allow_failure(futures[p]) if ok else futures[p]
                    for p, ok in zip(node.parents, node.allowed, strict=True)
                ]
                futures.append(
                    combine.submit(
                        node.op,
                        node.const,
                        _nest(node.shape, items),
                        wait_for=[futures[a] for a in node.after],
                    )
                )
            for future in futures:
                future.wait(WAIT_SECONDS)
            return [(f.name, f.state) for f in futures]

        runs = kit.run(body)
        for index, ((kind, expected), (_, state)) in enumerate(
            zip(_reference(nodes), runs, strict=True)
        ):
            where_ = f"node {index} of {nodes}"
            if kind == "completed":
                assert state.type is StateType.COMPLETED and state.result() == expected, (
                    f"rule: a run whose inputs completed returns the reference value "
                    f"{expected!r}; got {state!r} at {where_}"
                )
            elif kind == "failed":
                assert state.type is StateType.FAILED and isinstance(state.error, KitError), (
                    f"rule: a run that raised ends FAILED with its error; got {state!r} at {where_}"
                )
            else:
                upstream_names = [runs[p][0] for p in expected]
                assert state.name == "UpstreamFailed", (
                    f"rule: a run with an upstream that did not complete ends UpstreamFailed; "
                    f"got {state!r} at {where_}"
                )
                assert any(n in str(state.message) for n in upstream_names), (
                    f"rule: UpstreamFailed names an upstream run that did not complete "
                    f"({upstream_names}); got {state.message!r} at {where_}"
                )
