"""Completion and failure hooks: `hook(task, task_run, state)`, once, with the final state."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from baton import State, StateType, TaskTimeoutError, flow, task

RUNNERS = ["thread", "sync"]


def run_in_flow(runner: str, body: Callable[[], Any]) -> Any:
    return flow(task_runner=runner)(body)()


class HookCalls:
    """A hook that records every call, thread-safely."""

    def __init__(self, label: str = "hook") -> None:
        self.label = label
        self.lock = threading.Lock()
        self.calls: list[tuple[Any, Any, State]] = []
        self.__name__ = label

    def __call__(self, task_: Any, task_run: Any, state: State) -> None:
        with self.lock:
            self.calls.append((task_, task_run, state))


@contextmanager
def engine_log(caplog: pytest.LogCaptureFixture) -> Iterator[list[logging.LogRecord]]:
    """Capture the engine's records whether or not `baton` propagates to the root logger."""
    logger = logging.getLogger("baton.engine")
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep(logging.DEBUG)
    logger.addHandler(handler)
    try:
        with caplog.at_level(logging.DEBUG, logger="baton.engine"):
            yield records
    finally:
        logger.removeHandler(handler)


@pytest.mark.parametrize("runner", [None, *RUNNERS])
def test_on_completion_is_called_once_with_the_final_state(runner: str | None) -> None:
    done = HookCalls("done")
    failed = HookCalls("failed")

    @task(on_completion=done, on_failure=[failed])
    def double(x: int) -> int:
        return 2 * x

    def body() -> list[Any]:
        future = double.submit(21)
        return [future.result(), future.state, future.name]

    value, state, name = body() if runner is None else run_in_flow(runner, body)
    assert value == 42
    assert failed.calls == []
    [(task_, task_run, hook_state)] = done.calls
    assert task_ is double
    assert task_run.name == name
    assert task_run.task is double
    assert task_run.parameters == {"x": 21}
    assert hook_state.type is StateType.COMPLETED
    assert hook_state.result() == 42
    assert hook_state.timestamp == state.timestamp


@pytest.mark.parametrize("runner", [None, *RUNNERS])
def test_on_failure_is_called_once_after_the_last_retry(runner: str | None) -> None:
    done = HookCalls("done")
    failed = HookCalls("failed")
    attempts: list[int] = []

    @task(retries=2, on_completion=[done], on_failure=[failed])
    def flaky() -> None:
        attempts.append(1)
        raise ValueError(f"attempt {len(attempts)}")

    def body() -> list[Any]:
        future = flaky.submit()
        future.wait(10)
        return [future.state, future.name]

    state, name = body() if runner is None else run_in_flow(runner, body)
    assert len(attempts) == 3
    assert done.calls == []
    [(task_, task_run, hook_state)] = failed.calls
    assert task_ is flaky
    assert task_run.name == name
    assert hook_state.is_failed() and hook_state.is_final()
    assert str(hook_state.error) == "attempt 3"
    assert state.is_failed()


def test_on_completion_after_retries_sees_the_successful_attempt() -> None:
    done = HookCalls("done")
    failed = HookCalls("failed")
    attempts: list[int] = []

    @task(retries=3, on_completion=done, on_failure=failed)
    def flaky() -> int:
        attempts.append(1)
        if len(attempts) < 3:
            raise ConnectionError("reset")
        return len(attempts)

    assert flaky() == 3
    assert failed.calls == []
    [(_, _, state)] = done.calls
    assert state.result() == 3


def test_hooks_run_in_order_and_have_run_when_the_result_is_available() -> None:
    order: list[str] = []

    @task(on_completion=[lambda t, r, s: order.append("first"), lambda t, r, s: order.append("2")])
    def f() -> str:
        order.append("task")
        return "value"

    @flow(task_runner="thread")
    def pipeline() -> list[str]:
        f.submit().result()
        return list(order)

    assert pipeline() == ["task", "first", "2"]


def test_on_failure_sees_a_timed_out_state() -> None:
    failed = HookCalls("failed")
    release = threading.Event()

    @task(timeout_seconds=0.05, on_failure=failed)
    def stuck() -> None:
        release.wait(30)

    try:
        with pytest.raises(TaskTimeoutError):
            stuck()
    finally:
        release.set()
    [(_, _, state)] = failed.calls
    assert state.name == "TimedOut"


def test_with_options_can_add_hooks() -> None:
    done = HookCalls("done")

    @task
    def f() -> int:
        return 1

    hooked = f.with_options(on_completion=[done])
    assert f() == 1
    assert done.calls == []
    assert hooked() == 1
    assert len(done.calls) == 1


@pytest.mark.parametrize("runner", [None, *RUNNERS])
def test_a_raising_completion_hook_is_logged_and_does_not_change_the_state(
    runner: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    later = HookCalls("later")

    def broken_hook(task_: Any, task_run: Any, state: State) -> None:
        raise RuntimeError("hook bug")

    @task(on_completion=[broken_hook, later])
    def double(x: int) -> int:
        return 2 * x

    def body() -> list[Any]:
        future = double.submit(4)
        return [future.result(), future.state, future.name]

    with engine_log(caplog) as records:
        value, state, name = body() if runner is None else run_in_flow(runner, body)
    assert value == 8
    assert state.type is StateType.COMPLETED
    assert len(later.calls) == 1  # the hooks after the broken one still run
    errors = [r for r in records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    message = errors[0].getMessage()
    assert "broken_hook" in message
    assert repr(name) in message
    assert errors[0].exc_info is not None
    assert isinstance(errors[0].exc_info[1], RuntimeError)


@pytest.mark.parametrize("runner", RUNNERS)
def test_a_raising_failure_hook_keeps_the_original_failure(
    runner: str, caplog: pytest.LogCaptureFixture
) -> None:
    def broken_hook(task_: Any, task_run: Any, state: State) -> None:
        raise RuntimeError("hook bug")

    @task(on_failure=broken_hook)
    def fails() -> None:
        raise KeyError("the real error")

    def body() -> list[State]:
        future = fails.submit()
        future.wait(10)
        return [future.state]

    with engine_log(caplog) as records:
        [state] = run_in_flow(runner, body)
    assert state.is_failed()
    assert isinstance(state.error, KeyError)
    with pytest.raises(KeyError, match="the real error"):
        state.result()
    assert any(r.levelno == logging.ERROR and "broken_hook" in r.getMessage() for r in records), (
        records
    )


def test_direct_call_result_is_unaffected_by_a_raising_hook(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken_hook(task_: Any, task_run: Any, state: State) -> None:
        raise RuntimeError("hook bug")

    @task(on_completion=broken_hook)
    def f() -> str:
        return "fine"

    with engine_log(caplog) as records:
        assert f() == "fine"
    assert [r.levelno for r in records] == [logging.ERROR]


class HookEscape(BaseException):
    """A BaseException of the user's own, raised by a hook."""


@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize(
    "error", [SystemExit(3), GeneratorExit(), HookEscape("out")], ids=lambda e: type(e).__name__
)
@pytest.mark.parametrize("outcome", ["completed", "failed"])
def test_a_hook_raising_a_base_exception_is_logged_and_does_not_change_the_state(
    runner: str, error: BaseException, outcome: str, caplog: pytest.LogCaptureFixture
) -> None:
    def escaping_hook(task_: Any, task_run: Any, state: State) -> None:
        raise error

    @task(on_completion=escaping_hook, on_failure=escaping_hook)
    def ends(how: str) -> str:
        if how == "failed":
            raise KeyError("the real error")
        return "fine"

    def body() -> list[State]:
        future = ends.submit(outcome)
        future.wait(10)
        return [future.state]

    with engine_log(caplog) as records:
        [state] = run_in_flow(runner, body)
    if outcome == "completed":
        assert state.type is StateType.COMPLETED and state.result() == "fine"
    else:
        assert state.type is StateType.FAILED and isinstance(state.error, KeyError)
    assert any(r.levelno == logging.ERROR and "escaping_hook" in r.getMessage() for r in records), (
        records
    )


@pytest.mark.parametrize("runner", RUNNERS)
def test_a_keyboard_interrupt_from_a_hook_is_only_logged(
    runner: str, caplog: pytest.LogCaptureFixture
) -> None:
    # As from a done callback: the run has ended, whatever the hook does.
    def interrupting_hook(task_: Any, task_run: Any, state: State) -> None:
        raise KeyboardInterrupt

    @task(on_completion=interrupting_hook)
    def f() -> str:
        return "fine"

    def body() -> list[State]:
        future = f.submit()
        future.wait(10)
        return [future.state]

    with engine_log(caplog) as records:
        [state] = run_in_flow(runner, body)
    assert state.type is StateType.COMPLETED
    assert any("interrupting_hook" in r.getMessage() for r in records), records
