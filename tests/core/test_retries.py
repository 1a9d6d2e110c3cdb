"""Retries: attempts, delays (number, list, callable, backoff), jitter, conditions, states."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

import baton._engine
import pytest
from baton import (
    InvalidOptionsError,
    State,
    StateType,
    Task,
    exponential_backoff,
    flow,
    hookimpl,
    task,
)
from baton._plugins import plugin_manager
from baton.runners import Attempts

RUNNERS = ["thread", "sync"]


def _delay(run: Any, state: State, attempt: int) -> float | None:
    retry = Attempts(run, attempt).after(state)
    return None if retry is None else retry.delay


def run_in_flow(runner: str, body: Callable[[], Any]) -> Any:
    return flow(task_runner=runner)(body)()


class StateRecorder:
    """Collects every state change the observer hook reports, per task run name."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: dict[str, list[State]] = {}

    @hookimpl
    def task_run_state_changed(self, task_run: Any, state: State) -> None:
        with self.lock:
            self.seen.setdefault(task_run.name, []).append(state)


@contextmanager
def recording() -> Iterator[StateRecorder]:
    recorder = StateRecorder()
    pm = plugin_manager()
    pm.register(recorder)
    try:
        yield recorder
    finally:
        pm.unregister(recorder)


class SleepRecorder:
    """Stands in for the engine's `time` module: records retry delays instead of sleeping."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.delays.append(seconds)


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> SleepRecorder:
    recorder = SleepRecorder()
    monkeypatch.setattr(baton._engine, "time", recorder)
    return recorder


def fails_until(attempt: int, calls: list[int]) -> Callable[[], str]:
    """A function that raises on every call before call number `attempt`."""

    def fn() -> str:
        calls.append(len(calls) + 1)
        if len(calls) < attempt:
            raise ValueError(f"attempt {len(calls)} failed")
        return f"ok on attempt {len(calls)}"

    return fn


def fake_run(task_: Task[..., Any]) -> SimpleNamespace:
    return SimpleNamespace(id=1, name=f"{task_.name}-abc", task=task_)


# -- attempts -------------------------------------------------------------------------


@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize("retries", [0, 1, 3])
def test_a_failing_task_runs_retries_plus_one_times(runner: str, retries: int) -> None:
    calls: list[int] = []
    always_fails = task(retries=retries)(fails_until(100, calls))

    def body() -> list[State]:
        future = always_fails.submit()
        return [future.state if future.wait(10) else State.pending()]

    [state] = run_in_flow(runner, body)
    assert calls == list(range(1, retries + 2))
    assert state.is_failed()
    with pytest.raises(ValueError, match=f"attempt {retries + 1} failed"):
        state.result()


@pytest.mark.parametrize("runner", [None, *RUNNERS])
def test_a_run_that_succeeds_on_attempt_three_is_completed(runner: str | None) -> None:
    calls: list[int] = []
    flaky = task(retries=5)(fails_until(3, calls))

    def body() -> list[Any]:
        future = flaky.submit()
        return [future.result(), future.state]

    value, state = body() if runner is None else run_in_flow(runner, body)
    assert value == "ok on attempt 3"
    assert calls == [1, 2, 3]
    assert state.type is StateType.COMPLETED
    assert state.name == "Completed"


def test_direct_call_retries_too() -> None:
    calls: list[int] = []
    flaky = task(retries=2)(fails_until(3, calls))
    assert flaky() == "ok on attempt 3"
    assert calls == [1, 2, 3]


@pytest.mark.parametrize("runner", RUNNERS)
def test_retries_of_an_async_task(runner: str) -> None:
    calls: list[int] = []

    @task(retries=2, retry_delay_seconds=0.01)
    async def flaky() -> int:
        await asyncio.sleep(0)
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("reset")
        return len(calls)

    assert run_in_flow(runner, lambda: flaky.submit().result()) == 3
    assert len(calls) == 3


@pytest.mark.parametrize("runner", RUNNERS)
def test_observer_sees_retrying_states_and_future_ends_completed(runner: str) -> None:
    calls: list[int] = []
    flaky = task(retries=3)(fails_until(3, calls))

    def body() -> tuple[str, State]:
        future = flaky.submit()
        future.result()
        return future.name, future.state

    with recording() as recorder:
        name, final = run_in_flow(runner, body)
    states = recorder.seen[name]
    assert [(s.type, s.name) for s in states] == [
        (StateType.RUNNING, "Running"),
        (StateType.PENDING, "Retrying"),
        (StateType.RUNNING, "Running"),
        (StateType.PENDING, "Retrying"),
        (StateType.RUNNING, "Running"),
        (StateType.COMPLETED, "Completed"),
    ]
    assert states[1].message == "Attempt 2 after: ValueError: attempt 1 failed"
    assert states[3].message == "Attempt 3 after: ValueError: attempt 2 failed"
    assert states[-1] is final
    assert final.result() == "ok on attempt 3"
    stamps = [s.timestamp for s in states]
    assert stamps == sorted(stamps)


def test_future_state_during_the_next_attempt_is_running() -> None:
    in_second_attempt = threading.Event()
    release = threading.Event()
    calls: list[int] = []

    @task(retries=1)
    def flaky() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("first")
        in_second_attempt.set()
        assert release.wait(10)
        return "done"

    with recording() as recorder:

        @flow(task_runner="thread")
        def pipeline() -> list[Any]:
            future = flaky.submit()
            assert in_second_attempt.wait(10)
            during = future.state
            release.set()
            return [during, future.result(), future.state, future.name]

        during, value, final, name = pipeline()
    assert during.type is StateType.RUNNING
    assert any(s.name == "Retrying" for s in recorder.seen[name])
    assert value == "done"
    assert final.is_completed()


# -- delays ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("retries", "option", "expected"),
    [
        (3, 0.01, [0.01, 0.01, 0.01]),
        (4, [0.01, 0.02], [0.01, 0.02, 0.02, 0.02]),  # the last value repeats
        (2, [0.01, 0.02, 0.03], [0.01, 0.02]),
        (3, lambda retries: [0.001 * (n + 1) for n in range(retries)], [0.001, 0.002, 0.003]),
        (3, exponential_backoff(0.01), [0.01, 0.02, 0.04]),
    ],
    ids=["number", "short list", "long list", "callable", "exponential_backoff"],
)
@pytest.mark.parametrize("runner", RUNNERS)
def test_retry_delays(
    sleeps: SleepRecorder, runner: str, retries: int, option: Any, expected: list[float]
) -> None:
    calls: list[int] = []
    always_fails = task(retries=retries, retry_delay_seconds=option)(fails_until(100, calls))

    def body() -> bool:
        return always_fails.submit().wait(10)

    assert run_in_flow(runner, body) is True
    assert len(calls) == retries + 1
    assert sleeps.delays == pytest.approx(expected)


def test_zero_delay_does_not_sleep(sleeps: SleepRecorder) -> None:
    calls: list[int] = []
    flaky = task(retries=2)(fails_until(3, calls))
    assert flaky() == "ok on attempt 3"
    assert sleeps.delays == []


def test_no_delay_after_the_last_attempt(sleeps: SleepRecorder) -> None:
    calls: list[int] = []
    flaky = task(retries=3, retry_delay_seconds=0.01)(fails_until(2, calls))
    assert flaky() == "ok on attempt 2"
    assert sleeps.delays == [0.01]


def test_callable_delay_receives_the_number_of_retries() -> None:
    received: list[int] = []

    def delays(retries: int) -> list[float]:
        received.append(retries)
        return [1.0, 2.0, 3.0, 4.0][:retries]

    @task(retries=4, retry_delay_seconds=delays)
    def f() -> None: ...

    run = fake_run(f)
    failed = State.failed(ValueError("x"))
    assert [_delay(run, failed, n) for n in range(1, 5)] == [1.0, 2.0, 3.0, 4.0]
    assert set(received) == {4}


def test_real_retry_delay_is_waited() -> None:
    calls: list[float] = []

    @task(retries=1, retry_delay_seconds=0.05)
    def flaky() -> str:
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise ValueError("first")
        return "ok"

    assert flaky() == "ok"
    assert calls[1] - calls[0] >= 0.05


@pytest.mark.parametrize(
    ("factor", "expected"),
    [
        (1, [1.0]),
        (10, [10.0, 20.0, 40.0, 80.0]),
        (0.5, [0.5, 1.0, 2.0]),
        (0, [0.0, 0.0]),
    ],
)
def test_exponential_backoff_values(factor: float, expected: list[float]) -> None:
    assert exponential_backoff(factor)(len(expected)) == expected
    assert exponential_backoff(factor)(0) == []


@pytest.mark.parametrize("factor", [-1, "10", None])
def test_exponential_backoff_rejects_a_bad_factor(factor: Any) -> None:
    with pytest.raises(InvalidOptionsError, match=r"backoff_factor must be a number >= 0"):
        exponential_backoff(factor)


def test_exponential_backoff_as_an_option_gives_the_delay_of_each_retry() -> None:
    @task(retries=4, retry_delay_seconds=exponential_backoff(10))
    def f() -> None: ...

    run = fake_run(f)
    failed = State.failed(ValueError("x"))
    assert [_delay(run, failed, n) for n in range(1, 5)] == [10.0, 20.0, 40.0, 80.0]
    assert _delay(run, failed, 5) is None


# -- jitter ---------------------------------------------------------------------------


@pytest.mark.parametrize(("delay", "jitter"), [(10.0, 0.5), (2.0, 0.1), (1.0, 1.0)])
def test_jitter_keeps_delays_within_bounds_and_varies_them(delay: float, jitter: float) -> None:
    @task(retries=1, retry_delay_seconds=delay, retry_jitter_factor=jitter)
    def f() -> None: ...

    run = fake_run(f)
    failed = State.failed(ValueError("x"))
    samples = [_delay(run, failed, 1) for _ in range(500)]
    values = [s for s in samples if s is not None]
    assert len(values) == 500
    low, high = delay * (1 - jitter), delay * (1 + jitter)
    assert all(low <= v <= high for v in values), (min(values), max(values))
    assert min(values) < delay < max(values)
    assert len(set(values)) > 100


def test_jitter_never_makes_a_delay_negative() -> None:
    @task(retries=1, retry_delay_seconds=1.0, retry_jitter_factor=3.0)
    def f() -> None: ...

    run = fake_run(f)
    failed = State.failed(ValueError("x"))
    values = [_delay(run, failed, 1) for _ in range(300)]
    assert all(v is not None and 0.0 <= v <= 4.0 for v in values)
    assert 0.0 in values  # below zero before clamping in a third of the draws


@pytest.mark.parametrize("jitter", [None, 0.0])
def test_without_jitter_the_delay_is_exact(jitter: float | None) -> None:
    @task(retries=2, retry_delay_seconds=[3, 7], retry_jitter_factor=jitter)
    def f() -> None: ...

    run = fake_run(f)
    failed = State.failed(ValueError("x"))
    assert {_delay(run, failed, 1) for _ in range(50)} == {3.0}
    assert {_delay(run, failed, 2) for _ in range(50)} == {7.0}


def test_jitter_of_a_zero_delay_stays_zero() -> None:
    @task(retries=1, retry_jitter_factor=0.5)
    def f() -> None: ...

    assert _delay(fake_run(f), State.failed(ValueError("x")), 1) == 0.0


@pytest.mark.parametrize("runner", RUNNERS)
def test_jitter_in_a_real_run(sleeps: SleepRecorder, runner: str) -> None:
    calls: list[int] = []
    jittery = task(retries=3, retry_delay_seconds=0.01, retry_jitter_factor=0.5)(
        fails_until(100, calls)
    )
    assert run_in_flow(runner, lambda: jittery.submit().wait(10)) is True
    assert len(sleeps.delays) == 3
    assert all(0.005 <= d <= 0.015 for d in sleeps.delays), sleeps.delays


# -- when not to retry ----------------------------------------------------------------


def test_retry_delay_is_none_once_retries_are_used_up() -> None:
    @task(retries=2)
    def f() -> None: ...

    run = fake_run(f)
    failed = State.failed(ValueError("x"))
    assert _delay(run, failed, 1) == 0.0
    assert _delay(run, failed, 2) == 0.0
    assert _delay(run, failed, 3) is None


@pytest.mark.parametrize(
    "state",
    [State.crashed(KeyboardInterrupt()), State.cancelled(), State.completed(1)],
    ids=repr,
)
def test_only_failed_runs_are_retried(state: State) -> None:
    @task(retries=5)
    def f() -> None: ...

    assert _delay(fake_run(f), state, 1) is None


@pytest.mark.parametrize("runner", RUNNERS)
def test_retry_condition_fn_stops_retries_when_false(runner: str) -> None:
    received: list[tuple[Any, ...]] = []
    calls: list[str] = []
    errors = [ConnectionError("reset"), ConnectionError("reset again"), ValueError("bad data")]

    def transient_only(task_: Any, task_run: Any, state: State) -> bool:
        received.append((task_, task_run, state))
        return isinstance(state.error, ConnectionError)

    @task(retries=10, retry_condition_fn=transient_only)
    def fetch() -> None:
        error = errors[len(calls)]
        calls.append(type(error).__name__)
        raise error

    def body() -> list[Any]:
        future = fetch.submit()
        future.wait(10)
        return [future.state, future.name]

    final, name = run_in_flow(runner, body)
    assert calls == ["ConnectionError", "ConnectionError", "ValueError"]
    assert final.is_failed()
    with pytest.raises(ValueError, match="bad data"):
        final.result()
    assert len(received) == 3
    for task_, task_run, state in received:
        assert task_ is fetch
        assert task_run.name == name
        assert task_run.task is fetch
        assert state.is_failed()
    assert [str(state.error) for _, _, state in received] == ["reset", "reset again", "bad data"]


def test_retry_condition_fn_is_not_asked_when_no_retries_are_left() -> None:
    asked: list[int] = []

    @task(retries=1, retry_condition_fn=lambda t, r, s: asked.append(1) is None)
    def f() -> None:
        raise ValueError("always")

    with pytest.raises(ValueError, match="always"):
        f()
    assert asked == [1]


def test_retry_condition_fn_that_raises_stops_retries_and_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[int] = []

    def broken(task_: Any, task_run: Any, state: State) -> bool:
        raise RuntimeError("condition bug")

    @task(retries=3, retry_condition_fn=broken)
    def f() -> None:
        calls.append(1)
        raise ValueError("task error")

    with caplog.at_level(logging.ERROR, logger="baton.engine"):
        with pytest.raises(ValueError, match="task error"):
            f()
    assert calls == [1]
    messages = [r.getMessage() for r in caplog.records if r.name == "baton.engine"]
    assert any("retry_condition_fn of task 'f' raised" in m for m in messages)


@pytest.mark.parametrize("runner", RUNNERS)
def test_a_crash_is_not_retried(runner: str) -> None:
    calls: list[int] = []

    @task(retries=3)
    def interrupted() -> None:
        calls.append(1)
        raise SystemExit(1)

    def body() -> list[State]:
        future = interrupted.submit()
        future.wait(10)
        return [future.state]

    [state] = run_in_flow(runner, body)
    assert state.is_crashed()
    assert calls == [1]


# -- bad delays -----------------------------------------------------------------------


def never_called(retries: int) -> list[float]:
    raise AssertionError("not to be called")


@pytest.mark.parametrize(
    ("option", "details"),
    [
        (
            exponential_backoff,
            [
                "exponential_backoff must be called with a backoff factor",
                "exponential_backoff(backoff_factor=10)",
            ],
        ),
        (float("inf"), ["finite numbers of seconds >= 0", "(got inf)"]),
        (float("nan"), ["finite numbers of seconds >= 0", "(got nan)"]),
        ([1, float("inf")], ["finite numbers", "got inf in the list"]),
        ([float("nan"), 2], ["finite numbers", "got nan in the list"]),
        (
            "soon",
            ["a delay must be a number of seconds >= 0", "exponential_backoff(10)", "(got 'soon')"],
        ),
        ([1, "2"], ["got '2' in the list"]),
        (True, ["a delay must be a number of seconds >= 0"]),
        (lambda: [1.0], ["cannot be called with one argument", "take the number of retries"]),
        (
            lambda retries: "soon",
            ["'<lambda>' returned 'soon' when called with retries=3", "take the number of retries"],
        ),
        (lambda retries: -1, ["returned -1 when called with retries=3"]),
        (lambda retries: float("nan"), ["returned nan when called with retries=3"]),
        (lambda retries: [1, float("inf")], ["returned [1, inf] when called with retries=3"]),
        (lambda retries: exponential_backoff, ["returned <function exponential_backoff"]),
        (
            lambda retries: 1 / 0,
            ["raised ZeroDivisionError: division by zero when called with retries=3"],
        ),
    ],
    ids=[
        "exponential_backoff uncalled",
        "inf",
        "nan",
        "inf in a list",
        "nan in a list",
        "a string",
        "a string in a list",
        "a bool",
        "a callable taking nothing",
        "a callable returning a string",
        "a callable returning a negative number",
        "a callable returning nan",
        "a callable returning inf in a list",
        "a callable returning a function",
        "a callable raising",
    ],
)
def test_a_bad_delay_is_refused_at_decoration(option: Any, details: list[str]) -> None:
    with pytest.raises(InvalidOptionsError) as caught:
        task(retries=3, retry_delay_seconds=option)(fails_until(100, []))
    message = str(caught.value)
    assert message.startswith("Invalid options for a task:\n  retry_delay_seconds: ")
    for detail in details:
        assert detail in message


class TurnsToJunk:
    """Gives good delays when the task is defined, then `junk` (a callable that
    depends on something outside, such as a setting read at each retry)."""

    def __init__(self, junk: Any) -> None:
        self.junk = junk
        self.broken = False

    def __call__(self, retries: int) -> Any:
        if not self.broken:
            return [0.0] * retries
        if isinstance(self.junk, BaseException):
            raise self.junk
        return self.junk


@pytest.mark.parametrize(
    ("junk", "detail"),
    [
        ("soon", "returned 'soon' when called with retries=2"),
        (-1, "returned -1 when called with retries=2"),
        (float("nan"), "returned nan when called with retries=2"),
        ([0.1, float("inf")], "returned [0.1, inf] when called with retries=2"),
        (
            RuntimeError("no settings"),
            "raised RuntimeError: no settings when called with retries=2",
        ),
    ],
)
def test_a_delay_callable_returning_junk_later_raises_a_clear_error(junk: Any, detail: str) -> None:
    delays = TurnsToJunk(junk)
    flaky = task(retries=2, retry_delay_seconds=delays)(fails_until(100, []))
    delays.broken = True
    with pytest.raises(InvalidOptionsError) as caught:
        flaky.options.delay_for(1)
    message = str(caught.value)
    assert message.startswith("retry_delay_seconds: the callable ")
    assert detail in message
    assert "return a number of seconds >= 0 or a list of them" in message


@pytest.mark.parametrize("runner", RUNNERS)
def test_a_delay_callable_returning_junk_fails_the_run(runner: str) -> None:
    delays = TurnsToJunk("soon")
    calls: list[int] = []
    flaky = task(retries=2, retry_delay_seconds=delays)(fails_until(100, calls))
    delays.broken = True

    def body() -> list[State]:  # a State returned alone would be the flow's own
        future = flaky.submit()
        future.wait(10)
        return [future.state]

    [state] = run_in_flow(runner, body)
    assert state.type is StateType.FAILED
    assert isinstance(state.error, InvalidOptionsError)
    assert "returned 'soon' when called with retries=2" in str(state.error)
    assert calls == [1]


# -- delays too long to wait ----------------------------------------------------------


@pytest.mark.parametrize(
    ("delay", "jitter"), [(1e300, None), (0.01, 1e308), (10.0, 1e307)], ids=repr
)
def test_a_delay_longer_than_any_wait_is_cut_to_the_longest_wait_possible(
    delay: float, jitter: float | None
) -> None:
    # time.sleep(1e300) raises OverflowError: the run would crash instead of waiting.
    @task(retries=1, retry_delay_seconds=delay, retry_jitter_factor=jitter)
    def f() -> None: ...

    run = fake_run(f)
    failed = State.failed(ValueError("x"))
    for _ in range(20):
        waited = _delay(run, failed, 1)
        assert waited is not None and 0.0 <= waited <= threading.TIMEOUT_MAX, waited
