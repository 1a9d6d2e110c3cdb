"""Conformance tests: failed runs, upstream failures, retries, timeouts and crashes."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from baton import (
    Capability,
    CrashedRun,
    FlowRunFailed,
    State,
    StateType,
    TaskTimeoutError,
    UpstreamTaskError,
    allow_failure,
)
from baton.testing._rendezvous import WAIT_SECONDS
from baton.testing._spec import conformance
from baton.testing._suite_workers import MARGIN_SECONDS
from baton.testing._tasks import (
    KitAbort,
    KitError,
    abort,
    async_blocks_loop,
    async_fail,
    async_flaky,
    async_stoppable,
    blocked_attempt,
    describe,
    die,
    echo,
    fail,
    flaky,
    inc,
    never_retry,
    stoppable,
    touch,
)

if TYPE_CHECKING:
    from baton import Future
    from baton.testing._kit import Kit

__all__ = ["FailureTests"]


def _final(future: Future[Any]) -> State:
    """The run's final state; a run that is not final after a long wait hangs."""
    assert future.wait(WAIT_SECONDS), (
        f"rule: every run reaches a final state; {future.name!r} is still {future.state!r} "
        f"after {WAIT_SECONDS:g} s"
    )
    return future.state


def _raised(call: Callable[[], object]) -> BaseException | None:
    """What `call()` raised, if anything (an assertion on it then names the rule)."""
    try:
        call()
    except BaseException as exc:
        return exc
    return None


class FailureTests:
    @conformance()
    def test_a_raising_task_ends_failed_with_its_exception(self, kit: Kit) -> None:
        def body() -> tuple[State, BaseException | None, Any]:
            future = fail.submit("boom")
            state = _final(future)
            return state, _raised(future.result), future.result(raise_on_failure=False)

        state, raised, returned = kit.run(body)
        assert state.type is StateType.FAILED, (
            f"rule: a task that raises an Exception ends FAILED, not {state.type.value}"
        )
        assert state.name == "Failed", state
        assert isinstance(state.error, KitError), (
            f"rule: a FAILED state carries the task's own exception; got {state.error!r}"
        )
        assert state.message is not None and "KitError: boom" in state.message, state.message
        assert isinstance(raised, KitError) and str(raised) == "boom", (
            f"rule: future.result() raises the task's exception; it raised {raised!r}"
        )
        assert isinstance(returned, KitError), "rule: result(raise_on_failure=False) returns it"

    @conformance()
    def test_a_base_exception_ends_the_run_crashed(self, kit: Kit) -> None:
        def body() -> tuple[State, BaseException | None]:
            future = abort.submit("stop")
            state = _final(future)
            return state, _raised(future.result)

        state, raised = kit.run(body)
        assert state.type is StateType.CRASHED, (
            f"rule: a run ended by a BaseException (not an Exception) is CRASHED; got {state!r}"
        )
        assert isinstance(state.error, KitAbort), state.error
        assert isinstance(raised, CrashedRun), (
            f"rule: future.result() of a CRASHED run raises CrashedRun; it raised {raised!r}"
        )

    @conformance()
    def test_upstream_failure_ends_the_downstream_upstream_failed(self, kit: Kit) -> None:
        rv = kit.rv

        def body() -> tuple[State, str]:
            upstream = fail.submit("up")
            downstream = touch.submit(rv, "downstream-ran", upstream)
            state = _final(downstream)
            upstream.wait()
            return state, upstream.name

        state, upstream_name = kit.run(body)
        assert state.type is StateType.FAILED and state.name == "UpstreamFailed", (
            f"rule: a run whose upstream failed ends FAILED, named UpstreamFailed; got {state!r}"
        )
        assert isinstance(state.error, UpstreamTaskError), state.error
        assert upstream_name in str(state.error), (
            "rule: the UpstreamFailed error names the upstream run"
        )
        assert not rv.is_set("downstream-ran"), "rule: a run whose upstream failed never runs"

    @conformance()
    def test_upstream_failure_goes_down_a_chain(self, kit: Kit) -> None:
        def body() -> tuple[list[State], list[str]]:
            a = fail.submit("a")
            b = inc.submit(a)
            c = inc.submit(b)
            d = echo.submit(None, wait_for=[c])
            return [_final(f) for f in (a, b, c, d)], [f.name for f in (a, b, c, d)]

        states, names = kit.run(body)
        assert [s.name for s in states] == ["Failed", *["UpstreamFailed"] * 3], states
        for state, upstream in zip(states[1:], names, strict=False):
            assert upstream in str(state.message), (
                f"rule: UpstreamFailed names the run it waited for ({upstream!r}): {state!r}"
            )

    @conformance()
    def test_a_failed_wait_for_upstream_fails_the_run(self, kit: Kit) -> None:
        rv = kit.rv

        def body() -> State:
            upstream = fail.submit("up")
            state = _final(touch.submit(rv, "ran", wait_for=[upstream]))
            upstream.wait()
            return state

        state = kit.run(body)
        assert state.name == "UpstreamFailed", (
            f"rule: a failed wait_for upstream ends the run UpstreamFailed; got {state!r}"
        )
        assert not rv.is_set("ran")

    @conformance()
    def test_a_failed_future_nested_in_a_collection_fails_the_run(self, kit: Kit) -> None:
        def body() -> State:
            upstream = fail.submit("up")
            state = _final(echo.submit({"k": [1, (upstream,)]}))
            upstream.wait()
            return state

        state = kit.run(body)
        assert state.name == "UpstreamFailed", (
            f"rule: a failed future nested in an argument fails the run; got {state!r}"
        )

    @conformance()
    def test_allow_failure_passes_the_exception_in(self, kit: Kit) -> None:
        def body() -> tuple[str, str]:
            failed = fail.submit("up")
            completed = inc.submit(2)
            return (
                describe.submit(allow_failure(failed)).result(),
                describe.submit(allow_failure(completed)).result(),
            )

        with_failure, with_result = kit.run(body)
        assert with_failure == "KitError: up", (
            "rule: allow_failure(f) passes a failed upstream's exception in"
        )
        assert with_result == "int: 3", "rule: allow_failure(f) passes a result through"

    @conformance()
    def test_an_unhandled_failure_fails_the_flow(self, kit: Kit) -> None:
        names: list[str] = []

        def body() -> None:
            names.append(fail.submit("nobody looks").name)

        state = kit.run_state(body)
        assert state.is_failed(), f"rule: a failure nobody handled fails the flow: {state!r}"
        assert isinstance(state.error, FlowRunFailed), state.error
        assert names[0] in str(state.error), "rule: the flow's error names the failed run"

    @conformance()
    def test_a_handled_failure_leaves_the_flow_completed(self, kit: Kit) -> None:
        def body() -> str:
            fail.submit("handled").wait()
            return "fine"

        assert kit.run(body) == "fine", "rule: a failure the flow waited on does not fail it"

    @conformance()
    def test_a_flow_waits_for_every_run_it_submitted(self, kit: Kit) -> None:
        rv = kit.rv
        futures: list[Future[Any]] = []

        def body() -> None:
            futures.extend(touch.submit(rv, f"ran-{i}") for i in range(10))

        kit.run(body)
        assert all(f.done() for f in futures), "rule: a flow returns only once its runs are final"
        assert all(rv.is_set(f"ran-{i}") for i in range(10))

    # -- retries -------------------------------------------------------------------------

    @conformance()
    def test_retries_until_success(self, kit: Kit) -> None:
        def body() -> int:
            return flaky.with_options(retries=3).submit(kit.rv, "a", 2).result()

        assert kit.run(body) == 3, "rule: a run is retried until it passes, within `retries`"
        assert len(kit.rv.records("attempt-a")) == 3

    @conformance()
    def test_retries_used_up_end_failed(self, kit: Kit) -> None:
        def body() -> State:
            return _final(flaky.with_options(retries=1).submit(kit.rv, "b", 5))

        state = kit.run(body)
        assert state.is_failed() and "attempt 2 of 'b'" in str(state.message), (
            f"rule: after `retries` retries the last attempt's failure is final; got {state!r}"
        )
        assert len(kit.rv.records("attempt-b")) == 2, "rule: retries=1 makes two attempts"

    @conformance()
    def test_retry_delay_is_waited(self, kit: Kit) -> None:
        def body() -> int:
            retried = flaky.with_options(retries=1, retry_delay_seconds=0.3)
            return retried.submit(kit.rv, "c", 1).result()

        assert kit.run(body) == 2
        first, second = (float(t) for t in kit.rv.records("attempt-c"))
        assert second - first >= 0.29, (
            f"rule: a retry starts retry_delay_seconds after the failure; it started after "
            f"{second - first:.3f} s instead of 0.3 s"
        )

    @conformance()
    def test_retry_condition_can_refuse_a_retry(self, kit: Kit) -> None:
        def body() -> State:
            refused = flaky.with_options(retries=3, retry_condition_fn=never_retry)
            return _final(refused.submit(kit.rv, "d", 5))

        state = kit.run(body)
        assert state.is_failed(), state
        assert len(kit.rv.records("attempt-d")) == 1, (
            "rule: no retry when retry_condition_fn returns False"
        )

    # -- timeouts ------------------------------------------------------------------------

    @conformance()
    def test_a_timeout_ends_the_run_timed_out(self, kit: Kit) -> None:
        def body() -> State:
            return _final(stoppable.with_options(timeout_seconds=0.3).submit(kit.rv, "slow"))

        state = kit.run(body)
        assert state.type is StateType.FAILED and state.name == "TimedOut", (
            f"rule: a run past its timeout_seconds ends FAILED, named TimedOut; got {state!r}"
        )
        assert isinstance(state.error, TaskTimeoutError), state.error

    @conformance()
    def test_a_timeout_applies_to_each_attempt(self, kit: Kit) -> None:
        def body() -> State:
            timed = blocked_attempt.with_options(retries=1, timeout_seconds=0.3)
            return _final(timed.submit(kit.rv, "e"))

        state = kit.run(body)
        assert state.name == "TimedOut", state
        assert len(kit.rv.records("attempt-e")) == 2, (
            "rule: each attempt gets the whole timeout, and a timed-out attempt is retried"
        )

    @conformance(requires=(Capability.ASYNC,))
    def test_an_async_timeout_ends_the_run_timed_out(self, kit: Kit) -> None:
        def body() -> State:
            slow = async_stoppable.with_options(timeout_seconds=1)
            return _final(slow.submit(kit.rv, "slow"))

        state = kit.run(body)
        assert state.name == "TimedOut", (
            f"rule: an async run past its timeout is TimedOut: {state!r}"
        )
        assert isinstance(state.error, TaskTimeoutError), state.error
        kit.expect_work_stopped("slow", "when an async run times out")

    @conformance(
        requires=(Capability.ASYNC,),
        concurrent="the flow reads the run's state while its coroutine still blocks",
    )
    def test_an_async_run_blocking_its_loop_times_out_on_time(self, kit: Kit) -> None:
        rv = kit.rv

        def body() -> tuple[bool, State]:
            future = async_blocks_loop.with_options(timeout_seconds=0.3).submit(rv, "hog")
            try:
                rv.wait("started-hog")
                ended = future.wait(MARGIN_SECONDS)
                state = future.state
            finally:
                rv.signal("release-hog")
            return ended, state

        ended, state = kit.run(body)
        assert ended and state.name == "TimedOut", (
            "rule: an async run whose coroutine blocks its event loop past its timeout "
            "ends TimedOut on time, before the coroutine returns (the loop's own timer "
            f"cannot fire: watch it from outside); {MARGIN_SECONDS:g} s after it started it "
            f"was {state!r}"
        )
        assert isinstance(state.error, TaskTimeoutError), state.error

    @conformance(requires=(Capability.HARD_TIMEOUTS,))
    def test_a_hard_timeout_stops_the_work(self, kit: Kit) -> None:
        def body() -> State:
            return _final(stoppable.with_options(timeout_seconds=1).submit(kit.rv, "hard"))

        state = kit.run(body)
        assert state.name == "TimedOut", state
        kit.expect_work_stopped("hard", "with HARD_TIMEOUTS, when a sync run times out")

    # -- crashes -------------------------------------------------------------------------

    @conformance(requires=(Capability.CRASH_DETECTION,))
    def test_a_dying_worker_ends_the_run_crashed(self, kit: Kit) -> None:
        def body() -> tuple[State, BaseException | None, int]:
            future = die.submit(13)
            state = _final(future)
            return state, _raised(future.result), inc.submit(1).result()

        state, raised, after = kit.run(body)
        assert state.type is StateType.CRASHED, (
            f"rule: a run whose worker died (os._exit) ends CRASHED; got {state!r}"
        )
        assert isinstance(raised, CrashedRun), (
            f"rule: future.result() of a CRASHED run raises CrashedRun; it raised {raised!r}"
        )
        assert after == 2, "rule: the runner goes on running after a worker died"

    @conformance(requires=(Capability.CRASH_DETECTION,), concurrent=True)
    def test_a_dying_worker_takes_no_other_run_down(self, kit: Kit) -> None:
        rv = kit.rv

        def body() -> tuple[State, State]:
            survivor = stoppable.submit(rv, "survivor", "alive")
            rv.wait("started-survivor")
            crashed = _final(die.submit(7))
            rv.signal("release-survivor")
            return crashed, _final(survivor)

        crashed, survivor = kit.run(body)
        assert crashed.is_crashed(), crashed
        assert survivor.is_completed() and survivor.result() == "alive", (
            f"rule: a worker's death crashes only the run it was running; got {survivor!r}"
        )

    # -- async failures ------------------------------------------------------------------

    @conformance(requires=(Capability.ASYNC,))
    def test_async_failures_and_retries(self, kit: Kit) -> None:
        def body() -> tuple[State, int]:
            failed = _final(async_fail.submit("async boom"))
            retried = async_flaky.with_options(retries=2).submit(kit.rv, "f", 2).result()
            return failed, retried

        failed, retried = kit.run(body)
        assert failed.is_failed() and isinstance(failed.error, KitError), (
            f"rule: an async task that raises ends FAILED with its exception; got {failed!r}"
        )
        assert retried == 3, "rule: async runs are retried like sync ones"
