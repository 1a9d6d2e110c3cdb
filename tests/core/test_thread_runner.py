"""The thread and sync runners: concurrency, nested submission, async tasks, lifecycle."""

from __future__ import annotations

import re
import threading
import time

import anyio
import pytest
from baton import RunnerClosedError, flow, get_runner, task, wait
from baton._runners.sync import SyncRunner
from baton._runners.thread import ThreadPool, ThreadRunner


def test_runs_are_concurrent_up_to_max_workers() -> None:
    barrier = threading.Barrier(4, timeout=5)

    @task
    def meet(i: int) -> int:
        barrier.wait()  # only returns once four runs are inside at the same time
        return i

    @flow(task_runner=ThreadRunner(max_workers=4))
    def together() -> list[int]:
        return meet.map(range(4)).result()

    assert together() == [0, 1, 2, 3]


def test_max_workers_bounds_concurrency() -> None:
    lock = threading.Lock()
    running = [0]
    peak = [0]

    @task
    def busy(i: int) -> int:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.002)
        with lock:
            running[0] -= 1
        return i

    @flow(task_runner=ThreadRunner(max_workers=2))
    def bounded() -> list[int]:
        return busy.map(range(40)).result()

    assert bounded() == list(range(40))
    assert peak[0] <= 2


def _count_words(text: str) -> int:
    return len(text.split())


def _extract_emails(text: str) -> list[str]:
    return re.findall(r"[\w.+-]+@[\w-]+\.[\w.-]+", text)


@task
def analyze_texts(texts: list[str]) -> dict[str, list[object]]:
    futures = {op.__name__: task(op).map(texts) for op in [_count_words, _extract_emails]}
    wait([f for futs in futures.values() for f in futs])
    return {name: [f.result() for f in futs] for name, futs in futures.items()}


@pytest.mark.parametrize("workers", [1, 2])
def test_nested_map_inside_a_submitted_task_does_not_deadlock(workers: int) -> None:
    texts = ["a b c x@example.com", "d e y@example.org", "no mail"]

    @flow(task_runner=ThreadRunner(max_workers=workers))
    def nested() -> list[dict[str, list[object]]]:
        # every worker is taken by a parent that waits on its own children
        return analyze_texts.map([texts] * (workers + 1)).result()

    results = nested()
    assert results == [
        {
            "_count_words": [4, 3, 2],
            "_extract_emails": [["x@example.com"], ["y@example.org"], []],
        }
    ] * (workers + 1)


def test_deeply_nested_submission_with_one_worker() -> None:
    @task
    def depth(n: int) -> int:
        if n == 0:
            return 0
        return depth.submit(n - 1).result() + 1

    @flow(task_runner=ThreadRunner(max_workers=1))
    def deep() -> int:
        return depth.submit(20).result()

    assert deep() == 20


def test_pool_returns_to_its_size_after_nested_waits() -> None:
    pool = ThreadPool(1)
    done = threading.Event()
    inner_ran = threading.Event()

    def inner() -> None:
        inner_ran.set()

    def outer() -> None:
        from baton._futures import blocking_section

        pool.submit(inner)
        with blocking_section():
            assert inner_ran.wait(5)
        done.set()

    pool.submit(outer)
    assert done.wait(5)
    pool.shutdown(wait=True)
    assert inner_ran.is_set()


def test_ten_thousand_async_sleeps_share_an_event_loop() -> None:
    @task
    async def nap() -> int:
        await anyio.sleep(1)
        return 1

    threads_during: list[int] = []

    @flow
    def many() -> int:
        futures = [nap.submit() for _ in range(10_000)]
        threads_during.append(threading.active_count())
        return sum(f.result() for f in futures)

    assert many() == 10_000
    # One loop thread, not one thread per run.
    assert threads_during[0] < 50


def test_sync_runner_runs_each_task_inside_submit() -> None:
    order: list[str] = []

    @task
    def step(name: str) -> str:
        order.append(name)
        return threading.current_thread().name

    @flow(task_runner="sync")
    def sequential() -> list[str]:
        first = step.submit("a")
        order.append("after submit a")
        second = step.submit("b")
        return [first.result(), second.result()]

    caller = threading.current_thread().name
    assert sequential() == [caller, caller]
    assert order == ["a", "after submit a", "b"]


def test_sync_runner_runs_async_tasks() -> None:
    @task
    async def hello() -> str:
        await anyio.sleep(0)
        return "hi"

    @flow(task_runner=SyncRunner())
    def greets() -> str:
        return hello.submit().result()

    assert greets() == "hi"


@pytest.mark.parametrize("name", ["thread", "sync"])
def test_lifecycle_start_and_shutdown_twice_then_clear_error(name: str) -> None:
    runner = get_runner(name)
    runner.start()
    runner.start()
    runner.shutdown()
    runner.shutdown()
    assert runner.closed
    with pytest.raises(RunnerClosedError, match="shut down and cannot start again"):
        runner.start()


def test_a_started_runner_given_to_a_flow_is_left_running() -> None:
    runner = ThreadRunner(max_workers=1)
    with runner:

        @flow(task_runner=runner)
        def uses_started_runner() -> int:
            return 1

        assert uses_started_runner() == 1
        assert runner.started
    assert runner.closed


def test_submitting_to_a_shut_down_runner_is_a_clear_error() -> None:
    from baton._scope import RunScope

    calls: list[int] = []

    @task
    def record() -> None:
        calls.append(1)

    runner = ThreadRunner(max_workers=1).start()
    runner.shutdown()
    scope = RunScope(runner, "a test scope")
    token = scope.enter()
    try:
        with pytest.raises(
            RunnerClosedError,
            match=r"Cannot submit task run 'record-...': task runner 'thread' of a test "
            r"scope has been shut down",
        ):
            record.submit()
    finally:
        scope.exit(token)
    assert calls == []


def test_a_runner_instance_given_to_a_flow_is_duplicated_per_run() -> None:
    template = ThreadRunner(max_workers=3)

    @task
    def which_runner() -> object:
        from baton._taskrun import current_task_run

        run = current_task_run()
        assert run is not None
        return run.scope.runner

    @flow(task_runner=template)
    def twice() -> object:
        return which_runner.submit().result()

    first, second = twice(), twice()
    assert first is not second and first is not template
    assert not template.started and not template.closed
    assert first.closed and second.closed  # type: ignore[attr-defined]


def test_thread_runner_rejects_bad_max_workers() -> None:
    from baton import InvalidOptionsError

    with pytest.raises(InvalidOptionsError, match="max_workers: must be a whole number >= 1"):
        ThreadRunner(max_workers=0)


def test_max_workers_setting_is_read_when_the_runner_starts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BATON_THREAD_MAX_WORKERS", "3")
    runner = ThreadRunner().start()
    try:
        assert runner._pool is not None and runner._pool.max_workers == 3
    finally:
        runner.shutdown()
    monkeypatch.setenv("BATON_THREAD_MAX_WORKERS", "5")
    runner = ThreadRunner().start()
    try:
        assert runner._pool is not None and runner._pool.max_workers == 5
    finally:
        runner.shutdown()
