"""Conformance tests: waiting on futures, completion order, callbacks, cancellation."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import pytest

from baton import (
    CancelledRun,
    Capability,
    Future,
    State,
    StateType,
    as_completed,
    wait,
)
from baton.testing._rendezvous import WAIT_SECONDS
from baton.testing._spec import conformance
from baton.testing._tasks import add, async_add, echo, finish_after, inc, stoppable, touch

if TYPE_CHECKING:
    from baton.testing._kit import Kit

__all__ = ["FutureTests"]


class FutureTests:
    @conformance()
    def test_wait_returns_every_future_done(self, kit: Kit) -> None:
        def body() -> tuple[int, int, list[int]]:
            futures = [inc.submit(i) for i in range(5)]
            done, not_done = wait(futures)
            return len(done), len(not_done), sorted(f.result() for f in done)

        assert kit.run(body) == (5, 0, [1, 2, 3, 4, 5]), (
            "rule: wait(futures) returns (done, not_done) once every run is final"
        )

    @conformance(concurrent=True)
    def test_wait_with_a_timeout_leaves_unfinished_runs_in_not_done(self, kit: Kit) -> None:
        rv = kit.rv

        def body() -> tuple[bool, bool, bool, bool]:
            quick = inc.submit(1)
            blocked = stoppable.submit(rv, "blocked")
            quick.result()
            done, not_done = wait([quick, blocked], timeout=0.05)
            early = (done == {quick}, not_done == {blocked})
            rv.signal("release-blocked")
            done, not_done = wait([quick, blocked])
            return *early, done == {quick, blocked}, not not_done

        quick_done, blocked_pending, all_done, none_left = kit.run(body)
        assert quick_done and blocked_pending, (
            "rule: wait(..., timeout) returns at the timeout, unfinished runs in not_done"
        )
        assert all_done and none_left

    @conformance(concurrent=True)
    def test_as_completed_yields_in_completion_order(self, kit: Kit) -> None:
        rv = kit.rv

        def body() -> list[str]:
            slow = stoppable.submit(rv, "slow", "slow")
            fast = echo.submit("fast")
            order = []
            for future in as_completed([slow, fast]):
                order.append(future.result())
                rv.signal("release-slow")
            return order

        assert kit.run(body) == ["fast", "slow"], (
            "rule: as_completed yields futures in the order their runs finish"
        )

    @conformance(concurrent=True)
    def test_map_results_keep_input_order_when_runs_finish_out_of_order(self, kit: Kit) -> None:
        rv = kit.rv

        def body() -> tuple[list[str], list[str]]:
            futures = finish_after.map(rv, ["first", "second"], ["release-first", ""])
            finished = []
            for future in as_completed(futures):
                finished.append(future.result())
                rv.signal("release-first")  # only once "second" has finished
            return finished, futures.result()

        finished, results = kit.run(body)
        assert finished == ["second", "first"], "rule: as_completed follows completion order"
        assert results == ["first", "second"], (
            "rule: .map() results follow input order, whatever order the runs finish in"
        )

    @conformance()
    def test_as_completed_yields_each_future_once(self, kit: Kit) -> None:
        def body() -> list[int]:
            a, b = inc.submit(1), inc.submit(2)
            return sorted(f.result() for f in as_completed([a, b, a]))

        assert kit.run(body) == [2, 3], "rule: as_completed yields each future once"

    @conformance(concurrent=True)
    def test_as_completed_timeout_raises(self, kit: Kit) -> None:
        rv = kit.rv

        def body() -> str:
            blocked = stoppable.submit(rv, "blocked", "done")
            with pytest.raises(TimeoutError):
                next(iter(as_completed([blocked], timeout=0.05)))
            rv.signal("release-blocked")
            return str(blocked.result())

        assert kit.run(body) == "done", "rule: a run goes on after as_completed timed out"

    @conformance(concurrent=True)
    def test_result_timeout_raises_and_the_run_carries_on(self, kit: Kit) -> None:
        rv = kit.rv

        def body() -> tuple[bool, bool, StateType, Any]:
            blocked = stoppable.submit(rv, "blocked", "done")
            with pytest.raises(TimeoutError):
                blocked.result(timeout=0.05)
            waited = blocked.wait(0.05)
            state = blocked.state.type
            rv.signal("release-blocked")
            return waited, blocked.wait(), state, blocked.result()

        waited, finally_done, state, result = kit.run(body)
        assert not waited, "rule: future.wait(timeout) returns False while the run is unfinished"
        assert state in (StateType.PENDING, StateType.RUNNING), (
            f"rule: an unfinished run is PENDING or RUNNING; got {state}"
        )
        assert finally_done, "rule: future.wait() returns True once the run is final"
        assert result == "done"

    @conformance()
    def test_done_callbacks_run_once_with_the_future(self, kit: Kit) -> None:
        def body() -> tuple[bool, list[Future[Any]], list[Future[Any]], Future[Any]]:
            called = threading.Event()
            seen: list[Future[Any]] = []
            late: list[Future[Any]] = []
            future = inc.submit(1)

            def callback(f: Future[Any]) -> None:
                seen.append(f)
                called.set()

            future.add_done_callback(callback)
            future.wait()
            ran = called.wait(WAIT_SECONDS)
            future.add_done_callback(late.append)  # already final: called at once
            return ran, seen, late, future

        ran, seen, late, future = kit.run(body)
        assert ran, "rule: a done callback is called once the run is final"
        assert seen == [future], "rule: a done callback is called once, with the future"
        assert late == [future], "rule: a callback added to a final future is called at once"

    @conformance()
    def test_await_futures_in_an_async_flow(self, kit: Kit) -> None:
        async def body() -> list[int]:
            import asyncio

            first = await add.submit(1, 2)
            rest = await asyncio.gather(inc.submit(first), inc.submit(10))
            return [first, *rest]

        assert kit.run_async(body) == [3, 4, 11], "rule: `await future` gives its result"

    @conformance(requires=(Capability.ASYNC,))
    def test_await_async_task_futures_in_an_async_flow(self, kit: Kit) -> None:
        async def body() -> list[int]:
            return [await async_add.submit(1, 2), await async_add.submit(3, 4)]

        assert kit.run_async(body) == [3, 7]

    # -- cancellation --------------------------------------------------------------------

    @conformance(concurrent=True)
    def test_cancel_a_run_that_has_not_started(self, kit: Kit) -> None:
        rv = kit.rv

        def body() -> tuple[bool, State, object, str]:
            upstream = stoppable.submit(rv, "upstream", 1)
            downstream = touch.submit(rv, "downstream-ran", upstream)
            cancelled = downstream.cancel()
            state = downstream.state
            raised = downstream.result(raise_on_failure=False)
            rv.signal("release-upstream")
            return cancelled, state, raised, str(upstream.result())

        cancelled, state, raised, upstream = kit.run(body)
        assert cancelled, "rule: cancel() on a run that has not started returns True"
        assert state.type is StateType.CANCELLED, f"rule: a cancelled run is CANCELLED: {state!r}"
        assert isinstance(raised, CancelledRun), (
            f"rule: the result of a cancelled run is a CancelledRun error; got {raised!r}"
        )
        assert upstream == "1"
        assert not kit.rv.is_set("downstream-ran"), "rule: a cancelled run never runs"

    @conformance()
    def test_cancel_a_finished_run_returns_false(self, kit: Kit) -> None:
        def body() -> tuple[bool, StateType, int]:
            future = inc.submit(1)
            result = future.result()
            return future.cancel(), future.state.type, result

        assert kit.run(body) == (False, StateType.COMPLETED, 2), (
            "rule: cancel() of a final run returns False and changes nothing"
        )

    @conformance(concurrent=True)
    def test_an_exception_in_the_flow_cancels_runs_that_have_not_started(self, kit: Kit) -> None:
        rv = kit.rv
        downstreams: list[Future[Any]] = []

        def release_once_cancelled() -> None:
            # The upstream may only end once the flow has cancelled what had not started.
            while not downstreams or not downstreams[0].done():
                if rv.is_set("__abort__"):
                    return
                threading.Event().wait(0.005)
            rv.signal("release-upstream")

        def body() -> None:
            upstream = stoppable.submit(rv, "upstream", 1)
            downstreams.append(touch.submit(rv, "downstream-ran", upstream))
            raise RuntimeError("the flow failed")

        releaser = threading.Thread(target=release_once_cancelled, daemon=True)
        releaser.start()
        state = kit.run_state(body)
        releaser.join(WAIT_SECONDS)
        assert state.is_failed() and "the flow failed" in str(state.message), state
        assert downstreams[0].state.type is StateType.CANCELLED, (
            "rule: an exception in the flow cancels the runs that have not started; "
            f"got {downstreams[0].state!r}"
        )
        assert not rv.is_set("downstream-ran"), "rule: a cancelled run never runs"

    @conformance(requires=(Capability.CANCEL_RUNNING,), concurrent=True)
    def test_cancel_stops_a_running_run(self, kit: Kit) -> None:
        rv = kit.rv

        def body() -> tuple[bool, State]:
            running = stoppable.submit(rv, "running")
            rv.wait("started-running")
            stopped = kit.runner.cancel(running.task_run)
            if not stopped:
                rv.signal("release-running")  # the assertion below fails; end the run now
            running.wait(WAIT_SECONDS)
            return stopped, running.state

        stopped, state = kit.run(body)
        assert stopped, "rule: with CANCEL_RUNNING, runner.cancel(run) of a running run is True"
        assert state.type is StateType.CANCELLED, (
            f"rule: a running run the runner cancelled ends CANCELLED; got {state!r}"
        )
        kit.expect_work_stopped("running", "when it cancels a running run")
