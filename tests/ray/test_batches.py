"""Runs that are ready together go to Ray in batches: each run of a batch keeps what it
would have alone (its state, its result in the store, its failure, its crash)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import ray_tasks as rt
from baton import InvalidOptionsError, StateType, allow_failure, flow, wait
from baton_ray import RayTaskRunner
from raysetup import CPUS

pytestmark = pytest.mark.usefixtures("ray_local")


def test_a_run_that_kills_its_worker_in_a_batch_is_the_only_one_to_crash() -> None:
    @flow(task_runner=RayTaskRunner())
    def mapped() -> list[tuple[StateType, object]]:
        futures = rt.batched_exit_at.map(range(20), 7)
        return [
            (f.wait() and f.state.type, f.state.result(raise_on_failure=False)) for f in futures
        ]

    outcomes = mapped()
    assert [t for t, _ in outcomes] == [
        StateType.CRASHED if i == 7 else StateType.COMPLETED for i in range(20)
    ]
    assert [v for i, (_, v) in enumerate(outcomes) if i != 7] == [i for i in range(20) if i != 7]


def test_a_failing_run_in_a_batch_fails_alone_and_downstream_runs_see_each_result() -> None:
    @flow(task_runner=RayTaskRunner())
    def mapped() -> tuple[list[str], float, list[str]]:
        futures = rt.batched_inverse.map([1, 2, 0, 4, 5, 8, 10, 20])
        names = [(f.wait() and f.state.name) or "" for f in futures]
        ok = [f for f in futures if f.state.is_completed()]
        total = rt.total_of.submit(ok).result()
        after = rt.identity.map(futures)
        return names, total, [(f.wait() and f.state.name) or "" for f in after]

    names, total, after = mapped()
    assert names == ["Completed", "Completed", "Failed"] + ["Completed"] * 5
    assert total == pytest.approx(1 + 1 / 2 + 1 / 4 + 1 / 5 + 1 / 8 + 1 / 10 + 1 / 20)
    assert after == ["Completed", "Completed", "UpstreamFailed"] + ["Completed"] * 5


def test_large_results_of_a_batch_stay_in_the_store_and_feed_downstream_runs() -> None:
    @flow(task_runner=RayTaskRunner())
    def mapped() -> tuple[list[int], list[int]]:
        futures = rt.batched_payload.map([100, 200, 300, 400, 500, 600, 700, 800])
        sizes = rt.size.map(futures).result()
        return sizes, [len(v) for v in futures.result()]

    sizes, read = mapped()
    assert sizes == read == [k * 1024 for k in range(100, 900, 100)]


def test_a_run_of_a_sent_batch_cannot_be_stopped_alone(tmp_path: Path) -> None:
    # The first runs go alone, one per batch slot, and hold their workers; the rest
    # wait and then go in batches of two: run `first` and the run after it in one Ray
    # task, which runs them one after the other. Ray cannot stop one of them alone:
    # runner.cancel() said True for both, and each then ran (or went on) to its end.
    first = CPUS * 2  # the batch slots: two per CPU

    with RayTaskRunner() as runner:

        @flow(task_runner=runner)
        def body() -> tuple[list[bool], bool, list[StateType]]:
            futures = rt.batched_hold_or_touch.map(range(40), str(tmp_path), first)
            held, queued = futures[first], futures[first + 1]
            deadline = time.monotonic() + 30
            while sum(f.state.is_running() for f in futures) < first:
                assert time.monotonic() < deadline, "the first runs did not start"
                time.sleep(0.01)
            (tmp_path / "release-first").touch()
            while not (tmp_path / "started").exists():
                assert time.monotonic() < deadline, f"run {first} did not start"
                time.sleep(0.01)
            queued_ran = (tmp_path / f"ran-{first + 1}").exists()
            stopped = [runner.cancel(held.task_run), runner.cancel(queued.task_run)]
            (tmp_path / "release").touch()
            wait(futures, timeout=30)
            return stopped, queued_ran, [held.state.type, queued.state.type]

        stopped, queued_ran, states = body()
    assert not queued_ran, "the run after run `first` should wait behind it in their batch"
    assert stopped == [False, False]
    assert states == [StateType.COMPLETED, StateType.COMPLETED]
    assert (tmp_path / f"ran-{first + 1}").exists()


def test_batching_can_be_turned_off_or_fixed_for_the_runner() -> None:
    for size in (1, 3):

        @flow(task_runner=RayTaskRunner(batch_size=size))
        def mapped() -> list[int]:
            return rt.noop.map(range(10)).result()

        assert mapped() == list(range(10))
    with pytest.raises(InvalidOptionsError, match="batch_size"):
        RayTaskRunner(batch_size=0)


def test_a_chain_goes_in_batches_and_each_run_ends_as_it_would_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from baton_ray._batches import Batches

    sent: list[int] = []
    send = Batches._send_batch

    def counted(self: Batches, batch: Any) -> None:
        sent.append(len(batch.items))
        send(self, batch)

    monkeypatch.setattr(Batches, "_send_batch", counted)

    def program() -> tuple[list[str], int, list[str]]:
        link = rt.step.submit(0, fail_at=200)
        chain = [link]
        for _ in range(299):
            link = rt.step.submit(link, fail_at=200)
            chain.append(link)
        wait(chain)
        # Past the failure, a chain that lets it through.
        after = [rt.describe.submit(allow_failure(chain[250]))]
        return (
            [f.state.name for f in chain],
            chain[199].result(),
            [f.result().split(":")[0] for f in after],
        )

    on_ray = flow(task_runner=RayTaskRunner())(program)()
    on_thread = flow(task_runner="thread")(program)()
    assert on_ray == on_thread
    names, value, described = on_ray
    assert described == ["UpstreamTaskError"]
    assert names == ["Completed"] * 200 + ["Failed"] + ["UpstreamFailed"] * 99
    assert value == 200
    assert max(sent, default=0) > 1  # links went to Ray together


def test_runs_held_back_by_max_pending_wait_in_the_queue_not_taken_at_every_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # While max_pending runs are in Ray, the runs that wait stay in the batch queue: each
    # run's end pumps the queue, and they were taken out and given back every time (in a
    # flow run of 10,000 no-ops, 12 to 14 million runs taken out, 3 s instead of 0.5).
    from types import SimpleNamespace

    import baton_ray._batches as batches_module

    monkeypatch.setattr(batches_module, "_cpus", lambda: 2)
    driver = SimpleNamespace(_closing=None, max_pending=4, _active={})
    batches = batches_module.Batches(driver, None)  # type: ignore[arg-type]
    run = SimpleNamespace(future=SimpleNamespace(done=lambda: False))

    class Sent:  # a batch sent, holding max_pending runs in Ray
        batch = SimpleNamespace(items=[object()] * 4)

    batches._sent.add(Sent())  # type: ignore[arg-type]
    for index in range(10):
        batches.queue.put(SimpleNamespace(run=run, index=index), "noop", None)  # type: ignore[arg-type]
    taken: list[int] = []
    take = batches.queue.take

    def counted(everything: bool = False) -> Any:
        out = take(everything)
        taken.append(sum(len(batch) for batch in out))
        return out

    monkeypatch.setattr(batches.queue, "take", counted)
    for _ in range(5):
        batches.pump()  # as five runs end with no room freed
    assert sum(taken) == 0, f"{sum(taken)} waiting runs taken out with no room for them"
    assert len(batches.queue) == 10
