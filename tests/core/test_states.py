"""States: constructors, predicates, results, reprs, pickling, timestamps, and CRASHED runs."""

from __future__ import annotations

import pickle
import threading
import time
from typing import Any

import pytest
from baton import (
    CancelledRun,
    CrashedRun,
    FlowRunFailed,
    State,
    StateType,
    flow,
    task,
)

PREDICATES = ("is_pending", "is_running", "is_completed", "is_failed", "is_crashed", "is_cancelled")


def true_predicates(state: State) -> list[str]:
    return [name for name in PREDICATES if getattr(state, name)()]


# -- constructors and predicates ------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "type_", "name", "predicate", "final"),
    [
        (State.pending(), StateType.PENDING, "Pending", "is_pending", False),
        (State.running(), StateType.RUNNING, "Running", "is_running", False),
        (State.completed(1), StateType.COMPLETED, "Completed", "is_completed", True),
        (State.failed(ValueError("x")), StateType.FAILED, "Failed", "is_failed", True),
        (State.crashed(KeyboardInterrupt()), StateType.CRASHED, "Crashed", "is_crashed", True),
        (State.cancelled(), StateType.CANCELLED, "Cancelled", "is_cancelled", True),
    ],
)
def test_each_constructor_makes_its_type_and_only_its_predicate_is_true(
    state: State, type_: StateType, name: str, predicate: str, final: bool
) -> None:
    assert state.type is type_
    assert state.name == name
    assert true_predicates(state) == [predicate]
    assert state.is_final() is final


def test_named_states_keep_their_type() -> None:
    retrying = State.pending("Retrying", "Attempt 2 after: ValueError: x")
    assert (retrying.type, retrying.name, retrying.message) == (
        StateType.PENDING,
        "Retrying",
        "Attempt 2 after: ValueError: x",
    )
    assert not retrying.is_final()
    timed_out = State.failed(TimeoutError("slow"), name="TimedOut")
    assert (timed_out.type, timed_out.name) == (StateType.FAILED, "TimedOut")
    assert timed_out.is_failed() and timed_out.is_final()


def test_failed_state_message_describes_the_error_unless_given() -> None:
    assert State.failed(ValueError("bad input")).message == "ValueError: bad input"
    assert State.failed(ValueError()).message == "ValueError"
    assert State.failed(ValueError("x"), "custom").message == "custom"
    assert State.crashed(SystemExit(3)).message == "SystemExit: 3"


class _Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("str() of this error raises")


def test_a_failed_state_keeps_an_error_whose_str_raises() -> None:
    error = _Unprintable("hidden")
    state = State.failed(error)
    assert state.error is error
    assert state.message == "_Unprintable (its str() raised RuntimeError)"


def test_state_type_is_a_string_enum_with_a_readable_repr() -> None:
    assert StateType.FAILED == "FAILED"
    assert repr(StateType.FAILED) == "StateType.FAILED"
    assert [t.value for t in StateType] == [
        "PENDING",
        "RUNNING",
        "COMPLETED",
        "FAILED",
        "CRASHED",
        "CANCELLED",
    ]


# -- results --------------------------------------------------------------------------


def test_completed_result_is_the_value_and_defaults_to_none() -> None:
    value = {"rows": [1, 2]}
    assert State.completed(value).result() is value
    assert State.completed().result() is None
    assert State.completed(0).result(raise_on_failure=False) == 0
    assert State.completed(5).error is None


def test_failed_result_raises_or_returns_the_very_error() -> None:
    error = ValueError("x")
    state = State.failed(error)
    with pytest.raises(ValueError, match=r"^x$") as caught:
        state.result()
    assert caught.value is error
    assert state.result(raise_on_failure=False) is error
    assert state.error is error


def test_cancelled_result_raises_cancelled_run_with_the_message() -> None:
    state = State.cancelled("stopped by the user")
    with pytest.raises(CancelledRun, match="stopped by the user"):
        state.result()
    assert isinstance(state.result(raise_on_failure=False), CancelledRun)


@pytest.mark.parametrize("error", [KeyboardInterrupt(), SystemExit(2)])
def test_crashed_by_a_base_exception_raises_crashed_run_caused_by_it(error: BaseException) -> None:
    state = State.crashed(error, "the worker was interrupted")
    with pytest.raises(CrashedRun, match="the worker was interrupted") as caught:
        state.result()
    assert caught.value.__cause__ is error
    returned = state.result(raise_on_failure=False)
    assert isinstance(returned, CrashedRun)
    assert returned.__cause__ is error
    assert state.error is error


def test_crashed_by_an_exception_raises_that_exception() -> None:
    error = RuntimeError("worker died")
    with pytest.raises(RuntimeError, match="worker died") as caught:
        State.crashed(error).result()
    assert caught.value is error


def test_final_state_without_an_error_still_raises_a_baton_error() -> None:
    with pytest.raises(CrashedRun, match="lost the worker"):
        State(StateType.CRASHED, message="lost the worker").result()
    with pytest.raises(FlowRunFailed, match="nothing handled it"):
        State(StateType.FAILED, message="nothing handled it").result()


@pytest.mark.parametrize("state", [State.pending(), State.running(), State.pending("Retrying")])
def test_result_of_a_non_final_state_raises_value_error(state: State) -> None:
    with pytest.raises(ValueError, match="not final"):
        state.result()
    with pytest.raises(ValueError, match="not final"):
        state.result(raise_on_failure=False)


# -- repr -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "text"),
    [
        (State.completed(42), "Completed()"),
        (State.completed(42, "all good"), "Completed()"),
        (State.failed(ValueError("x")), "Failed('ValueError: x')"),
        (State.pending(), "Pending()"),
        (State.running(), "Running()"),
        (State.pending("Retrying", "Attempt 2"), "Retrying('Attempt 2')"),
        (State.failed(TimeoutError("slow"), name="TimedOut"), "TimedOut('TimeoutError: slow')"),
        (State.cancelled("stop"), "Cancelled('stop')"),
        (State.crashed(KeyboardInterrupt()), "Crashed('KeyboardInterrupt')"),
    ],
)
def test_repr(state: State, text: str) -> None:
    assert repr(state) == text


# -- pickling -------------------------------------------------------------------------


def _roundtrip_cases() -> list[State]:
    return [
        State.completed({"a": [1, 2]}),
        State.completed(),
        State.failed(ValueError("x"), "failed here", name="TimedOut"),
        State.crashed(KeyboardInterrupt(), "interrupted"),
        State.cancelled("stop"),
        State.pending("Retrying", "Attempt 2"),
        State.running(),
    ]


def _assert_same_state(copy: State, original: State) -> None:
    assert copy is not original
    assert (copy.type, copy.name, copy.message, copy.timestamp) == (
        original.type,
        original.name,
        original.message,
        original.timestamp,
    )
    assert repr(copy) == repr(original)
    if original.is_completed():
        assert copy.result() == original.result()
    elif original.is_final():
        assert type(copy.error) is type(original.error)
        assert copy.error is not None and original.error is not None
        assert copy.error.args == original.error.args
    else:
        with pytest.raises(ValueError, match="not final"):
            copy.result()


@pytest.mark.parametrize("state", _roundtrip_cases(), ids=repr)
def test_pickle_round_trip(state: State) -> None:
    _assert_same_state(pickle.loads(pickle.dumps(state)), state)


@pytest.mark.parametrize("state", _roundtrip_cases(), ids=repr)
def test_cloudpickle_round_trip(state: State) -> None:
    cloudpickle = pytest.importorskip("cloudpickle")
    _assert_same_state(cloudpickle.loads(cloudpickle.dumps(state)), state)


def test_pickled_failed_state_result_still_raises() -> None:
    copy = pickle.loads(pickle.dumps(State.failed(KeyError("missing"))))
    with pytest.raises(KeyError, match="missing"):
        copy.result()


class UnprintableError(Exception):
    """An error whose `str()` raises."""

    def __str__(self) -> str:
        raise RuntimeError("no text for you")


def test_a_failed_state_of_an_error_that_cannot_be_printed_still_has_a_message() -> None:
    error = UnprintableError()
    state = State.failed(error)
    assert state.error is error
    assert state.message == "UnprintableError (its str() raised RuntimeError)"


@pytest.mark.parametrize("runner", ["thread", "sync"])
def test_a_run_raising_an_error_that_cannot_be_printed_fails_with_that_error(runner: str) -> None:
    @task
    def raises_it() -> None:
        raise UnprintableError

    @flow(task_runner=runner)
    def body() -> list[State]:
        future = raises_it.submit()
        future.wait(10)
        return [future.state]  # in a list: a returned failed state would fail the flow

    [state] = body()
    assert state.type is StateType.FAILED
    assert isinstance(state.error, UnprintableError)


# -- timestamps -----------------------------------------------------------------------


def test_timestamps_are_wall_clock_and_do_not_go_back() -> None:
    before = time.time()
    states = [State.pending(), State.running(), State.completed(1)]
    after = time.time()
    stamps = [s.timestamp for s in states]
    assert before <= stamps[0] <= stamps[1] <= stamps[2] <= after
    assert State(StateType.PENDING, timestamp=12.5).timestamp == 12.5


def test_a_later_state_has_a_later_timestamp() -> None:
    first = State.pending()
    while time.time() == first.timestamp:  # the clock's resolution, not a wait for work
        pass
    later = State.completed(1)
    assert later.timestamp > first.timestamp


def test_final_state_of_a_run_is_stamped_when_the_run_ends() -> None:
    stamped_inside: list[float] = []

    @task
    def quick() -> int:
        stamped_inside.append(time.time())
        return 1

    state = quick(return_state=True)
    assert state.is_completed()
    assert state.timestamp >= stamped_inside[0]


# -- CRASHED runs ---------------------------------------------------------------------


@pytest.mark.parametrize("error_type", [KeyboardInterrupt, SystemExit])
def test_base_exception_in_a_submitted_run_crashes_only_that_run(
    error_type: type[BaseException],
) -> None:
    raised: list[BaseException] = []
    after: list[int] = []

    @task(retries=2)
    def interrupted() -> None:
        error = error_type()
        raised.append(error)
        raise error

    @task
    def double(x: int) -> int:
        return 2 * x

    @flow(task_runner="thread")
    def pipeline() -> dict[str, Any]:
        crashed = interrupted.submit()
        others = double.map([1, 2, 3])
        crashed.wait()
        state = crashed.state
        try:
            crashed.result()
        except CrashedRun as exc:
            error: BaseException = exc
        # The flow goes on after the crash and new runs still complete.
        after.append(double.submit(10).result())
        return {"state": state, "error": error, "others": others.result()}

    out = pipeline()
    state, error = out["state"], out["error"]
    assert state.is_crashed() and state.type is StateType.CRASHED
    assert error_type.__name__ in (state.message or "")
    assert "interrupted" in (state.message or "")  # the run's name
    # a crash is not retried: the task ended by a BaseException, not by failing
    assert len(raised) == 1
    assert isinstance(error, CrashedRun)
    assert error.__cause__ is raised[0]
    assert error_type.__name__ in str(error)
    assert out["others"] == [2, 4, 6]
    assert after == [20]


def test_crashed_run_result_outside_the_worker_is_not_a_keyboard_interrupt() -> None:
    started = threading.Event()

    @task
    def interrupted() -> None:
        started.set()
        raise KeyboardInterrupt

    @flow(task_runner="thread")
    def pipeline() -> list[State]:
        future = interrupted.submit()
        assert future.wait(10)
        with pytest.raises(CrashedRun, match="KeyboardInterrupt") as caught:
            future.result()
        assert isinstance(caught.value.__cause__, KeyboardInterrupt)
        # a returned State would become the flow's own final state
        return [future.state]

    [state] = pipeline()
    assert started.is_set()
    assert state.is_crashed()


def test_unhandled_crash_fails_the_flow_without_interrupting_it() -> None:
    @task
    def interrupted() -> None:
        raise SystemExit(3)

    @flow(task_runner="thread")
    def pipeline() -> int:
        interrupted.submit()
        return 1

    state = pipeline(return_state=True)
    assert state.is_failed()
    with pytest.raises(FlowRunFailed, match="interrupted"):
        state.result()


@pytest.mark.parametrize("error_type", [KeyboardInterrupt, SystemExit])
def test_direct_call_lets_a_base_exception_through_as_itself(
    error_type: type[BaseException],
) -> None:
    raised: list[BaseException] = []

    @task
    def interrupted() -> None:
        error = error_type()
        raised.append(error)
        raise error

    # A direct call runs in the caller's thread: a Ctrl-C there must stay a Ctrl-C.
    with pytest.raises(error_type) as caught:
        interrupted()
    assert caught.value is raised[0]


def test_direct_call_with_return_state_gives_the_crashed_state_of_a_system_exit() -> None:
    @task
    def exits() -> None:
        raise SystemExit(4)

    state = exits(return_state=True)
    assert state.is_crashed()
    assert "SystemExit: 4" in (state.message or "")
    with pytest.raises(CrashedRun, match="SystemExit") as caught:
        state.result()
    assert isinstance(caught.value.__cause__, SystemExit)


def test_base_exception_of_a_direct_call_inside_a_worker_crashes_the_calling_run() -> None:
    @task
    def inner() -> None:
        raise KeyboardInterrupt

    @task
    def outer() -> str:
        inner()
        return "not reached"

    @flow(task_runner="thread")
    def pipeline() -> list[State]:
        future = outer.submit()
        future.wait(10)
        with pytest.raises(CrashedRun, match="KeyboardInterrupt") as caught:
            future.result()
        assert isinstance(caught.value.__cause__, KeyboardInterrupt)
        return [future.state]

    [state] = pipeline()
    assert state.is_crashed()
    assert "outer" in (state.message or "")


@pytest.mark.parametrize("error_type", [KeyboardInterrupt, SystemExit])
def test_base_exception_caught_from_a_direct_call_is_not_reported_as_unhandled(
    error_type: type[BaseException],
) -> None:
    from baton import current_task_run
    from baton._scope import current_scope

    names: list[str] = []

    @task
    def interrupted() -> None:
        run = current_task_run()
        assert run is not None
        names.append(run.name)
        raise error_type

    with pytest.raises(error_type):
        interrupted()
    unhandled = [f.name for f in current_scope().unobserved_failures()]
    assert len(names) == 1
    assert names[0] not in unhandled


class _StrRaises(Exception):
    def __str__(self) -> str:
        raise RuntimeError("str() of this error raises")


def test_a_failed_state_of_an_error_whose_str_raises_names_its_type() -> None:
    error = _StrRaises()
    state = State.failed(error)
    assert state.is_failed() and state.error is error
    assert state.message == "_StrRaises (its str() raised RuntimeError)"
