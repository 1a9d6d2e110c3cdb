"""Timeouts: a run past `timeout_seconds` ends on time as TimedOut, and its work is stopped."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from baton import State, StateType, TaskTimeoutError, flow, task

RUNNERS = ["thread", "sync"]
# Long enough that a run which waited for the function would be unmistakable.
FUNCTION_WAITS = 30.0


def run_in_flow(runner: str, body: Callable[[], Any]) -> Any:
    return flow(task_runner=runner)(body)()


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """An event timed-out functions wait on; set at the end so their threads finish."""
    event = threading.Event()
    yield event
    event.set()


# -- sync tasks -----------------------------------------------------------------------


@pytest.mark.parametrize("runner", RUNNERS)
def test_sync_task_over_its_timeout_ends_timed_out_and_on_time(
    runner: str, release: threading.Event
) -> None:
    started = threading.Event()

    @task(timeout_seconds=0.2)
    def stuck() -> str:
        started.set()
        release.wait(FUNCTION_WAITS)
        return "finished"

    def body() -> list[Any]:
        begin = time.monotonic()
        future = stuck.submit()
        future.wait(FUNCTION_WAITS)
        elapsed = time.monotonic() - begin
        with pytest.raises(TaskTimeoutError) as caught:
            future.result()
        return [future.state, elapsed, caught.value, future.name]

    state, elapsed, error, name = run_in_flow(runner, body)
    assert started.is_set()
    assert not release.is_set()  # the function never got to finish
    assert elapsed < FUNCTION_WAITS / 3
    assert state.type is StateType.FAILED
    assert state.name == "TimedOut"
    assert state.is_failed() and state.is_final()
    assert isinstance(error, TimeoutError)
    assert f"Task run {name!r} exceeded its timeout of 0.2 s" in str(error)
    assert state.error is error


def test_direct_call_over_its_timeout_raises_task_timeout_error(release: threading.Event) -> None:
    @task(timeout_seconds=0.1)
    def stuck() -> None:
        release.wait(FUNCTION_WAITS)

    begin = time.monotonic()
    with pytest.raises(TaskTimeoutError, match=r"exceeded its timeout of 0\.1 s"):
        stuck()
    assert time.monotonic() - begin < FUNCTION_WAITS / 3
    state = stuck(return_state=True)
    assert state.name == "TimedOut"


def test_timeout_error_is_a_timeout_error(release: threading.Event) -> None:
    @task(timeout_seconds=0.05)
    def stuck() -> None:
        release.wait(FUNCTION_WAITS)

    with pytest.raises(TimeoutError) as caught:
        stuck()
    assert isinstance(caught.value, TaskTimeoutError)


@pytest.mark.parametrize("runner", RUNNERS)
def test_task_within_its_timeout_completes_normally(runner: str) -> None:
    @task(timeout_seconds=10)
    def quick(x: int) -> int:
        return x + 1

    @task(timeout_seconds=10)
    def fails() -> None:
        raise KeyError("not a timeout")

    def body() -> list[Any]:
        bad = fails.submit()
        bad.wait(10)
        return [quick.submit(1).result(), bad.state]

    value, state = run_in_flow(runner, body)
    assert value == 2
    assert state.name == "Failed"
    assert isinstance(state.error, KeyError)


@pytest.mark.parametrize("runner", RUNNERS)
def test_pure_python_busy_loop_is_stopped(runner: str) -> None:
    counter = [0]
    workers: list[threading.Thread] = []
    stop = threading.Event()  # only a guard, so a broken timeout cannot spin forever

    @task(timeout_seconds=0.2)
    def spin() -> None:
        workers.append(threading.current_thread())
        while not stop.is_set():
            counter[0] += 1

    def body() -> list[State]:
        future = spin.submit()
        future.wait(FUNCTION_WAITS)
        return [future.state]

    try:
        [state] = run_in_flow(runner, body)
        assert state.name == "TimedOut"
        [worker] = workers
        worker.join(5)
        assert not worker.is_alive(), "the busy loop was not stopped"
        # the loop ended without its guard: the timeout stopped it, and it counts no more
        assert not stop.is_set()
        assert counter[0] > 0
    finally:
        stop.set()


@pytest.mark.parametrize("runner", RUNNERS)
def test_task_with_a_timeout_sees_its_own_run_context(runner: str) -> None:
    from baton import current_task_run

    names: list[str | None] = []

    @task(timeout_seconds=5)
    def named() -> str:
        run = current_task_run()
        names.append(None if run is None else run.name)
        return "ok"

    def body() -> tuple[str, str]:
        future = named.submit()
        return future.result(), future.name

    value, name = run_in_flow(runner, body)
    assert value == "ok"
    assert names == [name]


# -- retries --------------------------------------------------------------------------


@pytest.mark.parametrize("runner", RUNNERS)
def test_retries_apply_to_timeouts(runner: str, release: threading.Event) -> None:
    attempts: list[int] = []

    @task(timeout_seconds=0.1, retries=2)
    def slow_then_fast() -> str:
        attempts.append(1)
        if len(attempts) < 3:
            release.wait(FUNCTION_WAITS)
        return f"attempt {len(attempts)}"

    def body() -> list[Any]:
        future = slow_then_fast.submit()
        return [future.result(timeout=FUNCTION_WAITS), future.state]

    value, state = run_in_flow(runner, body)
    assert value == "attempt 3"
    assert len(attempts) == 3
    assert state.is_completed()


@pytest.mark.parametrize("runner", RUNNERS)
def test_every_attempt_timing_out_ends_timed_out(runner: str, release: threading.Event) -> None:
    attempts: list[int] = []

    @task(timeout_seconds=0.05, retries=1)
    def always_slow() -> None:
        attempts.append(1)
        release.wait(FUNCTION_WAITS)

    def body() -> list[State]:
        future = always_slow.submit()
        future.wait(FUNCTION_WAITS)
        return [future.state]

    [state] = run_in_flow(runner, body)
    assert len(attempts) == 2
    assert state.name == "TimedOut"
    assert isinstance(state.error, TaskTimeoutError)


# -- async tasks ----------------------------------------------------------------------


@pytest.mark.parametrize("runner", RUNNERS)
def test_async_task_timeout_cancels_the_coroutine(runner: str) -> None:
    cleaned_up = threading.Event()
    reached_end = threading.Event()

    @task(timeout_seconds=0.1)
    async def stuck() -> str:
        try:
            await asyncio.sleep(FUNCTION_WAITS)
            reached_end.set()
            return "finished"
        finally:
            cleaned_up.set()

    def body() -> list[Any]:
        begin = time.monotonic()
        future = stuck.submit()
        future.wait(FUNCTION_WAITS)
        return [future.state, time.monotonic() - begin]

    state, elapsed = run_in_flow(runner, body)
    assert state.type is StateType.FAILED
    assert state.name == "TimedOut"
    assert isinstance(state.error, TaskTimeoutError)
    # the coroutine was cancelled before the run ended: its `finally` has already run
    assert cleaned_up.is_set()
    assert not reached_end.is_set()
    assert elapsed < FUNCTION_WAITS / 3
    with pytest.raises(TaskTimeoutError, match=r"exceeded its timeout of 0\.1 s"):
        state.result()


@pytest.mark.parametrize("runner", RUNNERS)
def test_retries_apply_to_async_timeouts(runner: str) -> None:
    attempts: list[int] = []
    cancelled: list[int] = []

    @task(timeout_seconds=0.1, retries=2)
    async def slow_then_fast() -> str:
        attempts.append(1)
        try:
            if len(attempts) < 3:
                await asyncio.sleep(FUNCTION_WAITS)
            return f"attempt {len(attempts)}"
        except asyncio.CancelledError:
            cancelled.append(len(attempts))
            raise

    value = run_in_flow(runner, lambda: slow_then_fast.submit().result(timeout=FUNCTION_WAITS))
    assert value == "attempt 3"
    assert cancelled == [1, 2]


def test_direct_call_of_an_async_task_times_out() -> None:
    cleaned_up: list[bool] = []

    @task(timeout_seconds=0.05)
    async def stuck() -> None:
        try:
            await asyncio.sleep(FUNCTION_WAITS)
        finally:
            cleaned_up.append(True)

    async def main() -> State:
        with pytest.raises(TaskTimeoutError):
            await stuck()
        return await stuck(return_state=True)

    state = asyncio.run(main())
    assert state.name == "TimedOut"
    assert cleaned_up == [True, True]


# -- timeouts that never come, and bad ones -------------------------------------------


@task
def add_one(x: int) -> int:
    return x + 1


@task
async def add_one_async(x: int) -> int:
    await asyncio.sleep(0)
    return x + 1


@pytest.mark.parametrize("runner", ["thread", "sync", "process"])
@pytest.mark.parametrize("seconds", [1e10, float("inf"), 2.0**64])
@pytest.mark.parametrize("fn", [add_one, add_one_async], ids=["sync task", "async task"])
def test_a_timeout_too_long_to_matter_lets_the_run_complete(
    runner: str, seconds: float, fn: Any
) -> None:
    patient = fn.with_options(timeout_seconds=seconds)

    def body() -> list[Any]:
        future = patient.submit(1)
        # called directly, an async task gives a coroutine: only the sync one here
        direct = patient(2, return_state=True) if fn is add_one else None
        return [future.result(), future.state, direct]

    value, state, direct = run_in_flow(runner, body)
    assert state.is_completed()
    assert value == 2
    if direct is not None:
        assert direct.result() == 3


def test_an_infinite_timeout_means_no_timeout() -> None:
    assert add_one.with_options(timeout_seconds=float("inf")).options.timeout_seconds is None


@pytest.mark.parametrize("seconds", [float("nan"), 0, -1, -float("inf")])
def test_a_timeout_that_is_not_a_positive_number_is_refused_at_decoration(
    seconds: float,
) -> None:
    from baton import InvalidOptionsError

    with pytest.raises(InvalidOptionsError) as caught:
        task(timeout_seconds=seconds)(lambda: None)
    message = str(caught.value)
    assert "timeout_seconds: must be a number of seconds > 0" in message
    assert "None for no timeout" in message
    assert repr(seconds) in message


# -- async tasks that block the event loop ----------------------------------------------


@pytest.mark.parametrize("runner", RUNNERS)
def test_an_async_task_blocking_the_loop_ends_timed_out_before_it_returns(
    runner: str, release: threading.Event, caplog: pytest.LogCaptureFixture
) -> None:
    from baton import current_task_run

    final_before_return: list[bool] = []
    returned = threading.Event()

    @task(timeout_seconds=0.1)
    async def blocks_the_loop() -> str:
        # Blocks the event loop as time.sleep would; on `sync`, .submit() itself waits
        # for the coroutine, so it lets go after a while there.
        release.wait(3.0 if runner == "sync" else FUNCTION_WAITS)
        run = current_task_run()
        assert run is not None
        final_before_return.append(run.state.type not in (StateType.RUNNING,))
        returned.set()
        return "finished"

    def body() -> list[Any]:
        future = blocks_the_loop.submit()
        ended = future.wait(FUNCTION_WAITS / 3)
        release.set()
        return [ended, future.state, future.name]

    with caplog.at_level(logging.WARNING, logger="baton"):
        ended, state, name = run_in_flow(runner, body)
    assert ended
    assert state.type is StateType.FAILED
    assert state.name == "TimedOut"
    assert isinstance(state.error, TaskTimeoutError)
    # The function goes on after its run ended (nothing can stop it): wait for it to
    # say what it saw, rather than race it.
    assert returned.wait(FUNCTION_WAITS)
    assert final_before_return == [True]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        f"Async task run {name!r} blocked the event loop past its timeout" in w
        and "await asyncio.sleep" in w
        for w in warnings
    )
