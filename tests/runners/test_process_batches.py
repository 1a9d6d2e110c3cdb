"""The `process` runner's batches: how many runs go to a worker in one message, sized
from how long the task's runs take (`baton.runners.BatchSizer`), or fixed by the
``batch_size`` option of the task or the runner.

The batches sent are seen by wrapping the pool's `_send_batch`; the runs report
their worker's pid and when they started and ended.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from baton import InvalidOptionsError, flow, get_runner, task
from baton._runners._process_jobs import Job, WorkerProcess
from baton._runners._process_pool import WorkerPool
from baton._runners.process import ProcessRunner

LONG = 0.15  # seconds: over the 0.1 s from which runs go one by one


@task
def nap(seconds: float) -> tuple[int, float, float]:
    started = time.time()
    time.sleep(seconds)
    return os.getpid(), started, time.time()


@task
def tiny(x: int) -> int:
    return x


@task(batch_size=1)
def tiny_alone(x: int) -> int:
    return x


@task(batch_size=5)
def tiny_in_fives(x: int) -> int:
    return x


@task(timeout_seconds=30)
def tiny_timed(x: int) -> int:
    return x


@dataclass
class Sent:
    """One message of runs to a worker, as the pool sent it."""

    pool: int
    worker: int
    task: str
    runs: int
    held: int  # runs the worker held already (sent, not reported)
    behind: str | None  # the task of the last of those


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[Sent]:
    seen: list[Sent] = []
    send = WorkerPool._send_batch

    def spy(pool: WorkerPool, worker: WorkerProcess, batch: list[Job]) -> None:
        name = batch[0].run.task.name
        behind = worker.jobs[-1].run.task.name if worker.jobs else None
        seen.append(Sent(id(pool), worker.pid, name, len(batch), len(worker.jobs), behind))
        send(pool, worker, batch)

    monkeypatch.setattr(WorkerPool, "_send_batch", spy)
    return seen


@pytest.fixture
def runner() -> Iterator[ProcessRunner]:
    own = ProcessRunner(max_workers=2).start()
    yield own
    own.shutdown()


def _map(runner: Any, fn: Any, items: list[Any]) -> list[Any]:
    @flow(task_runner=runner)
    def mapped() -> list[Any]:
        return fn.map(items).result()  # type: ignore[no-any-return]

    return mapped()


def _sizes(sent: list[Sent], name: str) -> list[int]:
    return [s.runs for s in sent if s.task == name]


def test_long_runs_go_one_by_one_and_spread_over_every_worker(
    runner: ProcessRunner, sent: list[Sent]
) -> None:
    _map(runner, nap, [LONG] * 2)  # the first runs measure the task
    sent.clear()
    results = _map(runner, nap, [LONG] * 16)
    by_worker: dict[int, list[tuple[float, float]]] = {}
    for pid, started, ended in results:
        by_worker.setdefault(pid, []).append((started, ended))
    assert len(by_worker) == 2
    counts = [len(runs) for runs in by_worker.values()]
    assert max(counts) - min(counts) <= 2, counts  # about half each (a busy machine may lag)
    for runs in by_worker.values():  # a worker runs one run at a time
        runs.sort()
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(runs))
    # Each run went alone to a worker that held nothing: none waited on a busy worker.
    assert [(s.runs, s.held) for s in sent] == [(1, 0)] * 16


def test_a_task_not_measured_yet_goes_one_by_one_then_small_runs_go_in_batches(
    runner: ProcessRunner, sent: list[Sent]
) -> None:
    assert _map(runner, tiny, list(range(1000))) == list(range(1000))
    sizes = _sizes(sent, "tiny")
    assert sizes[0] == 1  # nothing known of the task: its first run measures it
    assert max(sizes) > 1
    assert len(sizes) < 1000
    assert max(sizes) <= 64


def test_a_worker_that_holds_runs_is_sent_whole_batches_only(
    runner: ProcessRunner, sent: list[Sent]
) -> None:
    # A worker holds the batch it runs and the next one. Topping it up with a few runs
    # whenever one of its runs ends would start none of them sooner (they would wait
    # behind the runs it holds) and cost a message each time: a busy worker gets
    # runs only once there is room for a whole batch, that is, once it holds no more
    # than it is sent.
    _map(runner, tiny, list(range(200)))  # measure the task
    sent.clear()
    for _ in range(3):
        assert _map(runner, tiny, list(range(5000))) == list(range(5000))
    top_ups = [(s.held, s.runs) for s in sent if s.held]
    assert top_ups, "no batch went to a worker that held runs"
    assert all(held <= runs for held, runs in top_ups), top_ups


def test_small_runs_do_not_wait_behind_a_long_run(runner: ProcessRunner, sent: list[Sent]) -> None:
    _map(runner, nap, [LONG] * 2)
    _map(runner, tiny, list(range(100)))
    sent.clear()

    @flow(task_runner=runner)
    def mixed() -> tuple[int, list[int]]:
        long = nap.submit(3 * LONG)
        gate = tiny.submit(-1)  # the small runs are ready together, once it ended
        small = tiny.map(range(1000), wait_for=[gate])
        return long.result()[0], small.result()

    long_pid, values = mixed()
    assert values == list(range(1000))
    small = [s for s in sent if s.task == "tiny"]
    assert max(s.runs for s in small) > 1
    # None went to the worker running the long run until it had ended.
    assert not [s for s in small if s.behind == "nap"]
    assert long_pid in {s.worker for s in sent if s.task == "nap"}


def test_runs_of_a_task_with_batch_size_1_go_one_by_one(
    runner: ProcessRunner, sent: list[Sent]
) -> None:
    _map(runner, tiny_alone, list(range(5)))
    sent.clear()
    assert _map(runner, tiny_alone, list(range(300))) == list(range(300))
    assert set(_sizes(sent, "tiny_alone")) == {1}


def test_a_task_s_batch_size_n_caps_its_batches(runner: ProcessRunner, sent: list[Sent]) -> None:
    assert _map(runner, tiny_in_fives, list(range(300))) == list(range(300))
    sizes = _sizes(sent, "tiny_in_fives")
    assert max(sizes) == 5


@pytest.mark.parametrize(("size", "expected"), [(1, {1}), (3, {1, 2, 3})])
def test_the_runner_s_batch_size_applies_to_tasks_without_their_own(
    sent: list[Sent], size: int, expected: set[int]
) -> None:
    with ProcessRunner(max_workers=2, batch_size=size) as runner:
        _map(runner, tiny, list(range(5)))
        sent.clear()
        assert _map(runner, tiny, list(range(300))) == list(range(300))
        sizes = _sizes(sent, "tiny")
        assert set(sizes) <= expected
        assert max(sizes) == size
        # The task's own batch_size wins over the runner's.
        sent.clear()
        _map(runner, tiny_in_fives, list(range(300)))
        assert max(_sizes(sent, "tiny_in_fives")) == 5


def test_runs_with_a_timeout_go_alone_to_an_idle_worker(
    runner: ProcessRunner, sent: list[Sent]
) -> None:
    _map(runner, tiny_timed, list(range(5)))
    sent.clear()
    assert _map(runner, tiny_timed, list(range(100))) == list(range(100))
    assert {(s.runs, s.held) for s in sent} == {(1, 0)}


def test_batch_size_is_the_runner_s_own_on_a_shared_warm_pool(sent: list[Sent]) -> None:
    idle = 61.25  # a pool of this test's own

    def plain() -> object:
        return get_runner("process", max_workers=1, idle_timeout=idle)

    alone = get_runner("process", max_workers=1, idle_timeout=idle, batch_size=1)
    assert _map(plain(), tiny, list(range(300))) == list(range(300))
    first = len(sent)
    _map(alone, tiny, list(range(300)))
    assert {s.runs for s in sent[first:]} == {1}
    second = len(sent)
    _map(plain(), tiny, list(range(300)))
    assert max(s.runs for s in sent[second:]) > 1
    # batch_size shapes no worker: the flow runs all shared one pool, one worker.
    pids = _map(alone, nap, [0.0] * 3) + _map(plain(), nap, [0.0])
    assert len({pid for pid, _, _ in pids}) == 1
    assert len({s.pool for s in sent}) == 1
    assert len({s.worker for s in sent}) == 1


@pytest.mark.parametrize("size", [0, -1, 2.5, True, "4"])
def test_an_invalid_batch_size_is_refused(size: Any) -> None:
    with pytest.raises(InvalidOptionsError, match=r"batch_size: must be None .* or a whole number"):
        ProcessRunner(batch_size=size)
    with pytest.raises(InvalidOptionsError, match="batch_size"):
        get_runner("process", batch_size=size)
