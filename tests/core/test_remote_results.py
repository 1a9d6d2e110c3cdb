"""`encode_result` / `decode_result`: a run's outcome carried from a worker to the flow's
process, every kind of outcome rebuilt as it was."""

from __future__ import annotations

import pickle
import threading
from typing import Any

import pytest
from baton import State, StateType, task
from baton.runners import NestedFailure, RemoteResult, Retry, decode_result, encode_result


@task
def noop(x: Any) -> Any:
    return x


class _Run:
    """What `decode_result` reads of the run: its name and task."""

    name = "noop-1"
    task = noop


def _round_trip(result: RemoteResult) -> RemoteResult:
    blob = encode_result(result, "noop", "noop-1")
    return decode_result(blob, _Run())  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [None, 3, "text", [1, {"a": (2, 3)}], b"x" * 100_000])
def test_a_completed_result_comes_back_with_its_value_attempt_and_time(value: Any) -> None:
    state = State.completed(value)
    back = _round_trip(RemoteResult(state, attempt=3))
    assert back.state.type is StateType.COMPLETED and back.state.name == "Completed"
    assert back.state.result() == value
    assert back.state.timestamp == state.timestamp
    assert back.attempt == 3 and back.retry is None and back.unhandled == ()


def test_a_completed_state_with_its_own_name_and_message_keeps_them() -> None:
    state = State(StateType.COMPLETED, "Cached", "from the cache", data=5)
    back = _round_trip(RemoteResult(state)).state
    assert (back.type, back.name, back.message, back.result()) == (
        StateType.COMPLETED,
        "Cached",
        "from the cache",
        5,
    )


def test_a_state_returned_as_the_result_stays_the_result() -> None:
    inner = State.failed(ValueError("inner"))
    back = _round_trip(RemoteResult(State.completed(inner))).state
    assert back.is_completed()
    result = back.result()
    assert isinstance(result, State) and result.is_failed()


def test_a_failure_retry_and_unhandled_runs_come_back() -> None:
    failed = State.failed(ValueError("boom"))
    nested = NestedFailure("child-1", State.failed(KeyError("child")))
    retry = Retry(2, 0.5, State.pending("Retrying"))
    back = _round_trip(RemoteResult(failed, retry, (nested,), 1))
    assert back.state.is_failed() and isinstance(back.state.error, ValueError)
    assert back.retry is not None and back.retry.attempt == 2 and back.retry.delay == 0.5
    assert [f.name for f in back.unhandled] == ["child-1"]
    completed_with_unhandled = _round_trip(RemoteResult(State.completed(1), None, (nested,), 1))
    assert completed_with_unhandled.state.result() == 1
    assert [f.name for f in completed_with_unhandled.unhandled] == ["child-1"]


def test_a_value_that_cannot_be_pickled_fails_the_run_saying_so() -> None:
    back = _round_trip(RemoteResult(State.completed(threading.Lock()), attempt=2))
    assert back.state.is_failed()
    assert isinstance(back.state.error, pickle.PicklingError)
    message = str(back.state.error)
    assert "'noop-1'" in message and "cannot be pickled" in message
    assert back.attempt == 2


def test_a_result_that_cannot_be_unpickled_here_fails_the_run_saying_so() -> None:
    back = decode_result(b"not a pickle", _Run())  # type: ignore[arg-type]
    assert back.state.is_failed()
    assert "cannot be unpickled here" in str(back.state.error)
