"""Futures: results, timeouts, states, cancellation, callbacks, ids, `await` and typing."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import threading
import time
import typing
import warnings
from pathlib import Path

import pytest
from baton import (
    CancelledRun,
    Future,
    FutureList,
    State,
    StateType,
    flow,
    task,
)
from baton._runners.thread import ThreadRunner

GATE_SECONDS = 10


@task
def hold(started: threading.Event, release: threading.Event, value: object = None) -> object:
    """Signal that the run started, then stay RUNNING until the test releases it."""
    started.set()
    if not release.wait(GATE_SECONDS):
        raise TimeoutError("the test never released this run")
    return value


@task
def inc(x: int) -> int:
    return x + 1


@task
def fail(message: str) -> None:
    raise ValueError(message)


@task
async def adouble(x: int) -> int:
    await asyncio.sleep(0)
    return 2 * x


# -- result, wait, done ------------------------------------------------------------


def test_result_returns_the_value() -> None:
    future = inc.submit(41)
    assert isinstance(future, Future)
    assert future.result() == 42
    assert future.done()
    assert future.state.is_completed()


def test_result_timeout_names_the_run_and_the_run_carries_on() -> None:
    started, release = threading.Event(), threading.Event()
    future = hold.submit(started, release, "late")
    try:
        assert started.wait(GATE_SECONDS)
        with pytest.raises(TimeoutError, match=re.escape(repr(future.name))) as info:
            future.result(timeout=0.01)
        assert "RUNNING" in str(info.value)
        assert not future.done()
        assert future.state.type is StateType.RUNNING
    finally:
        release.set()
    assert future.result(timeout=GATE_SECONDS) == "late"
    assert future.state.is_completed()


def test_result_raises_the_task_exception() -> None:
    future = fail.submit("boom")
    with pytest.raises(ValueError, match=r"^boom$"):
        future.result()
    assert future.state.type is StateType.FAILED


def test_result_without_raising_returns_the_exception() -> None:
    future = fail.submit("quiet")
    error = future.result(raise_on_failure=False)
    assert isinstance(error, ValueError)
    assert str(error) == "quiet"
    assert future.state.error is error
    # Asking again gives the very same exception object, raised this time.
    with pytest.raises(ValueError) as info:
        future.result()
    assert info.value is error


def test_wait_returns_whether_the_run_is_done() -> None:
    started, release = threading.Event(), threading.Event()
    future = hold.submit(started, release, 1)
    try:
        assert started.wait(GATE_SECONDS)
        assert future.wait(0.01) is False
        assert future.done() is False
    finally:
        release.set()
    assert future.wait(GATE_SECONDS) is True
    assert future.done() is True
    # A final future answers at once, with or without a timeout.
    assert future.wait() is True
    assert future.wait(0) is True


def test_done_is_true_for_a_failed_run() -> None:
    future = fail.submit("x")
    assert future.wait(GATE_SECONDS) is True
    assert future.done()
    assert future.state.is_failed()


# -- states --------------------------------------------------------------------------


def test_state_goes_pending_running_completed() -> None:
    blocker_started, blocker_release = threading.Event(), threading.Event()
    started, release = threading.Event(), threading.Event()
    seen: dict[str, object] = {}

    @flow(task_runner=ThreadRunner(max_workers=1))
    def body() -> object:
        blocker = hold.submit(blocker_started, blocker_release, "blocker")
        try:
            assert blocker_started.wait(GATE_SECONDS)
            # The only worker is busy, so this run waits in the queue.
            future = hold.submit(started, release, 7)
            seen["pending"] = future.state.type
            seen["pending_done"] = future.done()
        finally:
            blocker_release.set()
        try:
            assert started.wait(GATE_SECONDS)
            seen["running"] = future.state.type
            seen["running_done"] = future.done()
        finally:
            release.set()
        seen["value"] = future.result(timeout=GATE_SECONDS)
        seen["final"] = future.state
        return blocker.result()

    assert body() == "blocker"
    assert seen["pending"] is StateType.PENDING
    assert seen["pending_done"] is False
    assert seen["running"] is StateType.RUNNING
    assert seen["running_done"] is False
    assert seen["value"] == 7
    final = seen["final"]
    assert isinstance(final, State)
    assert final.type is StateType.COMPLETED
    assert final.is_final()
    assert final.result() == 7


# -- cancel --------------------------------------------------------------------------


def test_cancel_a_queued_run() -> None:
    ran: list[str] = []
    lock = threading.Lock()

    @task
    def record(label: str) -> str:
        with lock:
            ran.append(label)
        return label

    blocker_started, blocker_release = threading.Event(), threading.Event()
    seen: dict[str, object] = {}

    @flow(task_runner=ThreadRunner(max_workers=1))
    def body() -> object:
        blocker = hold.submit(blocker_started, blocker_release, "blocker")
        try:
            assert blocker_started.wait(GATE_SECONDS)
            queued = record.submit("queued")
            seen["before"] = queued.state.type
            seen["cancelled"] = queued.cancel()
            seen["after"] = queued.state
            seen["again"] = queued.cancel()
        finally:
            blocker_release.set()
        # The single worker takes work in submission order: once this later run is
        # done, the cancelled one has been taken off the queue as well.
        seen["later"] = record.submit("later").result(timeout=GATE_SECONDS)
        seen["queued"] = queued
        return blocker.result()

    assert body() == "blocker"
    assert seen["before"] is StateType.PENDING
    assert seen["cancelled"] is True
    assert seen["again"] is True
    after = seen["after"]
    assert isinstance(after, State)
    assert after.type is StateType.CANCELLED
    assert seen["later"] == "later"
    assert ran == ["later"], "a cancelled run must never call its function"
    queued = seen["queued"]
    assert isinstance(queued, Future)
    assert queued.done()
    with pytest.raises(CancelledRun, match=re.escape(repr(queued.name))):
        queued.result()


def test_a_run_marked_sent_cannot_be_cancelled_until_its_next_attempt() -> None:
    """`TaskRun.mark_sent`: a runner sends the run where a cancellation cannot reach it
    (a batch on a worker); cancel() then says False and the run goes on to its end. A
    new attempt (Retrying) is cancellable again until it is sent."""
    from baton import TaskRun, TaskRunner

    held: list[TaskRun] = []

    class Holding(TaskRunner):
        name = "holding"

        def submit(self, run: TaskRun) -> None:
            held.append(run)

    @flow(task_runner=Holding())
    def body() -> list[object]:
        sent, cancelled_first, running = inc.submit(1), inc.submit(2), inc.submit(3)
        seen: list[object] = []
        assert cancelled_first.cancel()
        run, other, started = held
        seen.append(other.mark_sent())  # cancelled before it was sent: do not send it
        assert started.set_running()
        seen.append(started.mark_sent())  # sent again after its worker died: it goes
        started.set_state(State.completed(4))
        seen.append(running.result())
        seen.append(run.mark_sent())
        seen.append(sent.cancel())
        seen.append(sent.state.type)
        run.set_state(State.pending("Retrying"))  # a new attempt, not sent yet
        seen.append(sent.cancel())
        seen.append(sent.state.type)
        return seen

    assert body() == [False, True, 4, True, False, StateType.PENDING, True, StateType.CANCELLED]


def test_cancelling_a_run_counts_as_handling_it() -> None:
    """A run the flow cancelled on purpose is not an unhandled failure."""
    blocker_started, blocker_release = threading.Event(), threading.Event()
    seen: dict[str, bool] = {}

    @flow(task_runner=ThreadRunner(max_workers=1))
    def body() -> str:
        blocker = hold.submit(blocker_started, blocker_release, "blocker")
        try:
            assert blocker_started.wait(GATE_SECONDS)
            seen["cancelled"] = inc.submit(1).cancel()
        finally:
            blocker_release.set()
        return typing.cast(str, blocker.result())

    assert body() == "blocker"
    assert seen["cancelled"] is True


def test_cancel_a_running_run_returns_false() -> None:
    started, release = threading.Event(), threading.Event()
    future = hold.submit(started, release, "kept")
    try:
        assert started.wait(GATE_SECONDS)
        assert future.cancel() is False
        assert future.state.type is StateType.RUNNING
    finally:
        release.set()
    assert future.result(timeout=GATE_SECONDS) == "kept"
    assert future.state.is_completed()


def test_cancel_a_finished_run_returns_false() -> None:
    future = inc.submit(1)
    assert future.result() == 2
    assert future.cancel() is False
    assert future.state.is_completed()
    assert future.result() == 2


# -- callbacks -------------------------------------------------------------------------


def test_done_callback_added_before_completion() -> None:
    started, release = threading.Event(), threading.Event()
    called = threading.Event()
    calls: list[tuple[Future[object], bool, object]] = []

    def on_done(future: Future[object]) -> None:
        calls.append((future, future.done(), future.result()))
        called.set()

    future = hold.submit(started, release, 5)
    try:
        assert started.wait(GATE_SECONDS)
        future.add_done_callback(on_done)
        assert calls == []
    finally:
        release.set()
    assert called.wait(GATE_SECONDS)
    assert calls == [(future, True, 5)]


def test_done_callback_added_after_completion_runs_at_once() -> None:
    future = inc.submit(1)
    future.wait()
    calls: list[tuple[Future[int], threading.Thread]] = []
    future.add_done_callback(lambda f: calls.append((f, threading.current_thread())))
    assert calls == [(future, threading.current_thread())]


def test_a_raising_done_callback_does_not_stop_the_others() -> None:
    started, release = threading.Event(), threading.Event()
    called = threading.Event()

    def broken(_: Future[object]) -> None:
        raise RuntimeError("callback bug")

    future = hold.submit(started, release, None)
    try:
        future.add_done_callback(broken)
        future.add_done_callback(lambda _: called.set())
    finally:
        release.set()
    assert called.wait(GATE_SECONDS)
    assert future.state.is_completed()


def test_done_callback_sees_failures() -> None:
    got: list[BaseException | None] = []
    done = threading.Event()

    def on_done(future: Future[None]) -> None:
        got.append(future.state.error)
        done.set()

    future = fail.submit("in callback")
    future.add_done_callback(on_done)
    assert done.wait(GATE_SECONDS)
    assert len(got) == 1
    assert isinstance(got[0], ValueError)
    assert str(got[0]) == "in callback"


@task
def wait_for_path(path: str) -> str:
    """Stay RUNNING until `path` exists (a gate that also works across processes)."""
    import os
    import time

    give_up = time.monotonic() + GATE_SECONDS
    while not os.path.exists(path):
        if time.monotonic() > give_up:
            raise TimeoutError(f"the test never created {path}")
        time.sleep(0.005)
    return path


@pytest.mark.parametrize("runner", ["thread", "sync", "process"])
@pytest.mark.parametrize("error", [SystemExit(3), KeyboardInterrupt(), GeneratorExit()])
def test_a_done_callback_raising_a_base_exception_is_logged_and_changes_nothing(
    runner: str, error: BaseException, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    gate = tmp_path / "gate"
    others: list[str] = []

    def broken(_: Future[str]) -> None:
        raise error

    @flow(task_runner=runner)
    def pipeline() -> str:
        future = wait_for_path.submit(str(gate))
        future.add_done_callback(broken)
        future.add_done_callback(lambda f: others.append(f.result()))
        gate.touch()
        return future.result()

    if runner == "sync":
        gate.touch()  # the sync runner runs the task inside .submit()
    with caplog.at_level(logging.ERROR, logger="baton"):
        state = pipeline(return_state=True)
    assert state.is_completed(), state
    assert state.result() == str(gate)
    assert others == [str(gate)]
    logged = [r for r in caplog.records if "Done callback" in r.getMessage()]
    assert len(logged) == 1
    assert logged[0].exc_info is not None and logged[0].exc_info[1] is error


@pytest.mark.parametrize("runner", ["thread", "sync", "process"])
def test_a_done_callback_submits_to_the_flow_of_the_future(runner: str, tmp_path: Path) -> None:
    from baton._scope import current_scope

    gate = tmp_path / "gate"
    submitted = threading.Event()
    inner: list[Future[int]] = []

    def then_inc(future: Future[str]) -> None:
        inner.append(inc.submit(len(future.result())))
        submitted.set()

    @flow(task_runner=runner)
    def pipeline() -> tuple[bool, int]:
        future = wait_for_path.submit(str(gate))
        future.add_done_callback(then_inc)
        gate.touch()
        assert submitted.wait(GATE_SECONDS)
        return inner[0]._run.scope is current_scope(), inner[0].result()

    if runner == "sync":
        gate.touch()
    same_scope, value = pipeline()
    assert same_scope, "the callback's run went to another runner than the flow's"
    assert value == len(str(gate)) + 1


_WAITING_CALLBACK = """
import sys, time
from baton import flow, get_runner, task

@task
def nap(x, seconds):
    time.sleep(seconds)
    return x

if __name__ == "__main__":
    seen = []

    def waits_for(other):
        def callback(future):
            try:
                seen.append(other.result())
            except RuntimeError as exc:
                seen.append(str(exc))
        return callback

    @flow(task_runner=get_runner(sys.argv[1]))
    def body():
        fast = nap.submit(1, 0.05)
        slow = nap.submit(2, 1.0)
        fast.add_done_callback(waits_for(slow))
        return [fast.result(), slow.result()]

    print(body(), seen, flush=True)
"""


@pytest.mark.parametrize("runner", ["thread", "process"])
def test_a_done_callback_that_waits_for_another_run_is_refused_not_left_hanging(
    runner: str, tmp_path: Path
) -> None:
    # A done callback runs in the thread that made its run final: on `process` the one
    # thread that reports every run's end, which then never heard of the run the
    # callback waited for (the flow hung for ever). Waiting there raises instead, the
    # same on every runner.
    import subprocess
    import sys

    script = tmp_path / "waiting_callback.py"
    script.write_text(_WAITING_CALLBACK)
    done = subprocess.run(
        [sys.executable, str(script), runner],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "BATON_LOG_LEVEL": "WARNING"},
    )
    assert done.returncode == 0, done.stderr
    result, _, seen = done.stdout.partition(" ")
    assert result == "[1," and seen.startswith('2] ["Done callback '), done.stdout
    assert "waits for <Future 'nap-" in seen and "must not wait for another run" in seen


# -- ids, names, repr ------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX only")
def test_runs_in_a_process_forked_while_a_thread_held_the_futures_locks_do_not_wait() -> None:
    # Futures share 256 locks, one per run id modulo 256: a fork copies a lock that
    # another thread held as held, and a future of the child that took it would wait
    # for ever. Here a thread holds them all as the process forks.
    from baton import _futures

    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        locks = _futures._LOCKS
        for lock in locks:
            lock.acquire()
        held.set()
        release.wait(60)
        for lock in locks:
            lock.release()

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        assert held.wait(10)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork beside threads
            pid = os.fork()
        if pid == 0:
            code = 1
            try:

                @flow(task_runner="sync")
                def in_the_child() -> list[int]:
                    return inc.map(range(300)).result()

                code = 0 if in_the_child() == list(range(1, 301)) else 2
            finally:
                os._exit(code)
        deadline = time.monotonic() + 30
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                pytest.fail("the forked process waited for a lock held in its parent")
            time.sleep(0.05)
    finally:
        release.set()
        thread.join()
    assert os.waitstatus_to_exitcode(status) == 0


def test_task_run_ids_are_unique_ints() -> None:
    futures = [inc.submit(i) for i in range(50)] + list(inc.map(range(50)))
    ids = [future.task_run_id for future in futures]
    assert all(type(i) is int for i in ids)
    assert len(set(ids)) == len(ids)
    assert [f.result() for f in futures[:50]] == list(range(1, 51))
    assert futures[0].task_run.id == futures[0].task_run_id


def test_repr_names_the_run_and_its_state() -> None:
    future = inc.submit(1)
    future.wait()
    text = repr(future)
    assert future.name in text
    assert "Completed" in text


# -- await -----------------------------------------------------------------------------


def test_await_a_future_of_a_sync_task() -> None:
    async def main() -> int:
        return await inc.submit(1)

    assert asyncio.run(main()) == 2


def test_await_a_future_of_an_async_task() -> None:
    async def main() -> list[int]:
        futures = [adouble.submit(i) for i in range(5)]
        return [await future for future in futures]

    assert asyncio.run(main()) == [0, 2, 4, 6, 8]


def test_await_waits_for_a_held_run() -> None:
    started, release = threading.Event(), threading.Event()

    async def main() -> tuple[bool, object]:
        future = hold.submit(started, release, "awaited")

        async def consume() -> object:
            return await future

        waiter = asyncio.ensure_future(consume())
        try:
            assert started.wait(GATE_SECONDS)
            for _ in range(5):
                await asyncio.sleep(0)
            still_waiting = not waiter.done()
        finally:
            release.set()
        return still_waiting, await asyncio.wait_for(waiter, GATE_SECONDS)

    assert asyncio.run(main()) == (True, "awaited")


def test_await_a_failed_future_raises_its_exception() -> None:
    async def main() -> None:
        await fail.submit("awaited failure")

    with pytest.raises(ValueError, match="awaited failure"):
        asyncio.run(main())


def test_await_inside_an_async_task_and_flow() -> None:
    @task
    async def fan_out(n: int) -> list[int]:
        sync_futures = [inc.submit(i) for i in range(n)]
        async_futures = [adouble.submit(i) for i in range(n)]
        return [await f for f in sync_futures] + [await f for f in async_futures]

    @flow
    async def body() -> list[int]:
        return await fan_out.submit(3)

    assert asyncio.run(body()) == [1, 2, 3, 0, 2, 4]


def test_blocking_on_a_future_inside_an_async_task_is_refused() -> None:
    started, release = threading.Event(), threading.Event()

    @task
    async def blocks() -> object:
        future = hold.submit(started, release, None)
        try:
            return future.result()
        finally:
            release.set()

    outcome = blocks.submit()
    error = outcome.result(timeout=GATE_SECONDS, raise_on_failure=False)
    assert isinstance(error, RuntimeError)
    assert "await future" in str(error)


# -- typing ----------------------------------------------------------------------------


def test_future_and_future_list_are_generic() -> None:
    alias = Future[int]
    assert typing.get_origin(alias) is Future
    assert typing.get_args(alias) == (int,)
    assert typing.get_args(FutureList[str]) == (str,)
    assert issubclass(FutureList, list)
