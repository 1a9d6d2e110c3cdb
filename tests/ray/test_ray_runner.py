"""The `ray` runner on a local Ray: where results go, nested runs, resources,
backpressure, crashes, retries, timeouts and stopping."""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest
import ray_tasks as rt
from baton import (
    CrashedRun,
    Future,
    State,
    StateType,
    TaskTimeoutError,
    allow_failure,
    flow,
    task,
)
from baton.testing._rendezvous import Rendezvous
from baton_ray import RayTaskRunner, remote_options
from raysetup import CPUS

pytestmark = pytest.mark.usefixtures("ray_local")


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _gone(pid: int, seconds: float = 20) -> bool:
    deadline = time.monotonic() + seconds
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


# -- selection and the Ray it uses ---------------------------------------------------------


def test_selected_by_name_it_runs_tasks_in_ray_workers() -> None:
    @flow(task_runner="ray")
    def pids() -> list[int]:
        return rt.pid.map(range(4)).result()

    assert os.getpid() not in pids()


def test_the_baton_task_runner_setting_selects_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATON_TASK_RUNNER", "ray")

    @flow
    def default_runner() -> int:
        return rt.pid.submit().result()

    assert default_runner() != os.getpid()


def test_a_ray_started_by_someone_else_is_used_and_left_running() -> None:
    import ray

    runner = RayTaskRunner()
    with runner:
        assert flow(task_runner=runner)(lambda: rt.identity.submit(5).result())() == 5
    assert runner.closed
    assert ray.is_initialized(), "the runner must not shut down a Ray it did not start"


def test_an_address_of_another_cluster_is_refused_while_connected() -> None:
    from baton import BatonError

    with pytest.raises(BatonError, match="already connected to the Ray cluster at"):
        RayTaskRunner(address="127.0.0.1:1").start()


# -- where results go -----------------------------------------------------------------------


def _rss_peak_during(body: Any) -> tuple[int, int, Any]:
    process = psutil.Process()
    before = process.memory_info().rss
    peak = [before]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.005):
            peak[0] = max(peak[0], process.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        result = body()
    finally:
        stop.set()
        sampler.join()
    peak[0] = max(peak[0], process.memory_info().rss)
    return before, peak[0], result


@pytest.mark.slow
def test_a_large_result_goes_worker_to_worker_never_through_the_driver() -> None:
    megabytes = 200

    @flow(task_runner=RayTaskRunner())
    def pipeline() -> int:
        return rt.size.submit(rt.payload.submit(megabytes)).result()

    pipeline()  # workers and imports warmed up, outside the measurement
    before, peak, result = _rss_peak_during(pipeline)
    assert result == megabytes * rt.MB
    assert peak - before < 50 * rt.MB, (
        f"the driver's RSS grew by {(peak - before) / rt.MB:.0f} MB while a "
        f"{megabytes} MB result went from one task to the next"
    )

    # The measurement does see a value that does reach the driver.
    @flow(task_runner=RayTaskRunner())
    def fetch() -> int:
        return len(rt.payload.submit(megabytes).result())

    before, peak, result = _rss_peak_during(fetch)
    assert result == megabytes * rt.MB
    assert peak - before > megabytes * rt.MB // 2


def test_small_results_and_failures_reach_downstream_runs() -> None:
    @flow(task_runner=RayTaskRunner())
    def mixed() -> tuple[list[Any], State, str, str]:
        failed = rt.describe.submit(None)
        numbers = rt.identity.map([1, "two", b"3", None, (4,), {"five": 5}])
        passed = rt.identity.submit(numbers)
        bad = rt.size.submit(3)  # len(3) raises TypeError
        downstream = rt.identity.submit(bad)
        allowed = rt.describe.submit(allow_failure(bad))
        downstream.wait()
        failed.wait()
        return passed.result(), downstream.state, allowed.result(), failed.result()

    values, downstream, allowed, described = mixed()
    assert values == [1, "two", b"3", None, (4,), {"five": 5}]
    assert downstream.name == "UpstreamFailed"
    assert isinstance(downstream.error.__cause__, TypeError)  # type: ignore[union-attr]
    assert allowed.startswith("TypeError: ")
    assert described == "NoneType: None"


def test_arguments_plain_or_not_arrive_as_given() -> None:
    # Plain data travels pre-pickled; a local class, a function and an ObjectRef go
    # through Ray's own serializer (by value, and with the ref's ownership).
    import ray

    class Local:
        def __init__(self, n: int) -> None:
            self.n = n

        def __eq__(self, other: object) -> bool:
            return isinstance(other, Local) and other.n == self.n

    ref = ray.put("stored")

    @flow(task_runner=RayTaskRunner())
    def arguments() -> list[Any]:
        plain = rt.identity.submit({"k": [1, 2.5, "s", b"b", None, (True,)]})
        local = rt.identity.submit([Local(3)])
        function = rt.identity.submit(len)
        nested = rt.identity.submit([ref])
        return [plain.result(), local.result(), function.result(), nested.result()]

    plain, local, function, nested = arguments()
    assert plain == {"k": [1, 2.5, "s", b"b", None, (True,)]}
    assert local == [Local(3)]
    assert function is len
    assert ray.get(nested[0]) == "stored"


# -- nested runs ----------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["result", "wait", "as_completed"])
def test_parents_holding_every_cpu_wait_for_children_without_deadlock(
    rv: Rendezvous, how: str
) -> None:
    # Twice as many parents as CPUs, and the first CPUS of them meet before they
    # submit: every CPU is held by a parent that then blocks on its children.
    parties = tuple(f"p{i}" for i in range(CPUS))
    names = [*parties, *(f"late{i}" for i in range(CPUS))]

    @flow(task_runner=RayTaskRunner())
    def family() -> list[list[Any]]:
        return rt.parent.map(rv, names, [parties] * CPUS + [()] * CPUS, how).result()

    for values, child_pids, parent_pid in family():
        assert values == [0, 10, 20]
        assert parent_pid not in child_pids, "children run in other Ray workers"
        assert os.getpid() not in child_pids


def test_async_tasks_await_nested_runs_on_ray() -> None:
    @flow(task_runner=RayTaskRunner())
    def nested() -> list[list[int]]:
        return rt.async_parent.map([1, 5]).result()

    assert nested() == [[10, 20, 30], [50, 60, 70]]


def test_a_task_run_ends_after_the_runs_it_submitted(rv: Rendezvous) -> None:
    @flow(task_runner=RayTaskRunner())
    def forgetful() -> tuple[bool, bool]:
        future = rt.fire_and_forget.submit(rv)
        rv.wait("parent-returning", "nested-started")
        # The parent's function has returned; its run lasts as long as the nested run.
        ended_early = future.wait(1.0)
        rv.signal("release-nested")
        future.result()
        return ended_early, rv.is_set("nested-finished")

    assert forgetful() == (False, True)


# -- resources -------------------------------------------------------------------------------


@task(tags={"ray:num_cpus=0.5"})
def tagged_assigned() -> dict[str, float]:
    import ray

    return dict(ray.get_runtime_context().get_assigned_resources())


def test_remote_options_reserve_resources_for_the_runs_submitted_inside() -> None:
    @flow(task_runner=RayTaskRunner())
    def reserved() -> tuple[dict[str, float], dict[str, float], list[dict[str, float]]]:
        default = rt.assigned.submit()
        with remote_options(num_cpus=0.25):
            quarter = rt.assigned.submit()
            mapped = rt.assigned.map(range(2))
        return default.result(), quarter.result(), mapped.result()

    default, quarter, mapped = reserved()
    assert default.get("CPU") == 1
    assert quarter.get("CPU") == 0.25
    assert [m.get("CPU") for m in mapped] == [0.25, 0.25]


def test_tags_set_a_tasks_resources_and_a_block_overrides_them() -> None:
    @flow(task_runner=RayTaskRunner())
    def tagged() -> tuple[dict[str, float], dict[str, float]]:
        from_tag = tagged_assigned.submit()
        with remote_options(num_cpus=0.75):
            overridden = tagged_assigned.submit()
        return from_tag.result(), overridden.result()

    from_tag, overridden = tagged()
    assert from_tag.get("CPU") == 0.5
    assert overridden.get("CPU") == 0.75


def test_nested_blocks_merge_runtime_env_variables() -> None:
    @flow(task_runner=RayTaskRunner())
    def envs() -> list[str | None]:
        with remote_options(runtime_env={"env_vars": {"BATON_OUTER": "outer"}}):
            with remote_options(runtime_env={"env_vars": {"BATON_INNER": "inner"}}):
                return rt.env.map(["BATON_OUTER", "BATON_INNER"]).result()

    assert envs() == ["outer", "inner"]


# -- backpressure ----------------------------------------------------------------------------


def test_at_most_max_pending_runs_are_in_ray_at_once(rv: Rendezvous) -> None:
    runner = RayTaskRunner(max_pending=3)
    seen: list[tuple[int, int]] = []

    def body() -> list[int]:
        futures = rt.hold.map(rv, range(10))
        while len(rv.records("held")) < CPUS:
            time.sleep(0.01)
        driver = runner._driver
        assert driver is not None
        # Runs not in Ray wait in the driver's queue or in its batches.
        seen.append((len(driver._active), len(driver._queue) + len(driver._batches.queue)))
        rv.signal("release-held")
        return futures.result()

    with runner:
        assert flow(task_runner=runner)(body)() == list(range(10))
    assert seen == [(3, 7)], "three runs in Ray (two running, one queued there), seven here"


@pytest.mark.slow
def test_a_lazy_map_keeps_ray_and_the_driver_bounded() -> None:
    runner = RayTaskRunner(max_pending=20)
    largest = [0]

    def numbers() -> Iterator[int]:
        for i in range(3_000):
            if i % 100 == 0 and runner._driver is not None:
                largest[0] = max(largest[0], len(runner._driver._active))
            yield i

    def body() -> int:
        total = 0
        for future in rt.noop.map(numbers(), max_in_flight=100):
            total += future.result()
        return total

    with runner:
        before, peak, total = _rss_peak_during(flow(task_runner=runner)(body))  # type: ignore[arg-type]
    assert total == sum(range(3_000))
    assert 0 < largest[0] <= 20
    assert peak - before < 100 * rt.MB


# -- crashes, retries, timeouts ---------------------------------------------------------------


def test_a_worker_that_dies_crashes_the_run_with_a_clear_message(rv: Rendezvous) -> None:
    @flow(task_runner=RayTaskRunner())
    def dying() -> tuple[State, State, str, int]:
        crashed = rt.die_attempts.submit(rv, "a", 1)
        downstream = rt.identity.submit(crashed)
        allowed = rt.describe.submit(allow_failure(crashed))
        return _final(crashed), _final(downstream), allowed.result(), rt.identity.submit(7).result()

    crashed, downstream, allowed, after = dying()
    assert crashed.type is StateType.CRASHED
    assert "Ray worker died" in str(crashed.message)
    assert isinstance(crashed.error, CrashedRun)
    assert downstream.name == "UpstreamFailed"
    assert allowed.startswith("WorkerLostError: ")  # a CrashedRun: retried like a failure
    assert after == 7, "the flow carries on after a worker died"


def _final(future: Future[Any]) -> State:
    assert future.wait(60), f"{future!r} did not finish"
    return future.state


def test_crashed_attempts_are_retried_after_their_delay(rv: Rendezvous) -> None:
    retried = rt.die_attempts.with_options(retries=2, retry_delay_seconds=0.5)

    @flow(task_runner=RayTaskRunner())
    def recovering() -> tuple[int, int]:
        first = retried.submit(rv, "b", 2)
        return first.result(), rt.identity.submit(first).result()

    assert recovering() == (3, 3)
    starts = [float(t) for t in rv.records("attempt-b")]
    assert len(starts) == 3
    assert all(later - earlier >= 0.49 for earlier, later in itertools.pairwise(starts))


def test_retries_used_up_on_crashes_end_crashed(rv: Rendezvous) -> None:
    @flow(task_runner=RayTaskRunner())
    def hopeless() -> tuple[State]:
        return (_final(rt.die_attempts.with_options(retries=1).submit(rv, "c", 5)),)

    (state,) = hopeless()
    assert state.is_crashed()
    assert len(rv.records("attempt-c")) == 2


def test_a_worker_killed_from_outside_crashes_the_run(rv: Rendezvous) -> None:
    @flow(task_runner=RayTaskRunner())
    def killed() -> tuple[State]:
        future = rt.wait_to_be_killed.submit(rv, "k")
        rv.wait("started-k")
        psutil.Process(int(rv.read("started-k"))).kill()
        return (_final(future),)

    (state,) = killed()
    assert state.is_crashed()
    assert "Ray worker died" in str(state.message)


@pytest.mark.slow
def test_a_timeout_kills_a_task_blocked_in_c(rv: Rendezvous) -> None:
    slow = rt.sleep_in_c.with_options(timeout_seconds=1, retries=1)

    @flow(task_runner=RayTaskRunner())
    def timed() -> tuple[State]:
        return (_final(slow.submit(rv, "t", 120)),)

    (state,) = timed()
    assert state.name == "TimedOut"
    assert isinstance(state.error, TaskTimeoutError)
    pids = [int(p) for p in rv.records("attempt-t")]
    assert len(pids) == 2, "each attempt gets its timeout, and a timed-out one is retried"
    assert all(_gone(p) for p in pids), "the workers of timed-out attempts were killed"
    assert not rv.is_set("woke-t")


@pytest.mark.slow
def test_a_timeout_does_not_count_while_a_run_waits_for_a_cpu(rv: Rendezvous) -> None:
    timed = rt.identity.with_options(timeout_seconds=1)

    @flow(task_runner=RayTaskRunner())
    def crowded() -> list[int]:
        holders = rt.hold.map(rv, range(CPUS))
        while len(rv.records("held")) < CPUS:
            time.sleep(0.01)
        waiting = timed.submit(41)
        # Every CPU is taken for longer than the timeout: the clock has not started.
        time.sleep(1.5)
        rv.signal("release-held")
        return [*holders.result(), waiting.result()]

    assert crowded() == [*range(CPUS), 41]


# -- stopping ------------------------------------------------------------------------------


def test_shutdown_without_waiting_stops_runs_in_ray(rv: Rendezvous) -> None:
    runner = RayTaskRunner().start()

    @flow(task_runner=runner)
    def interrupted() -> tuple[State, int]:
        future = rt.wait_to_be_killed.submit(rv, "s")
        rv.wait("started-s")
        runner.shutdown(wait=False)
        future.wait(10)
        return future.state, int(rv.read("started-s"))

    state, worker = interrupted()
    assert state.is_crashed()
    assert "shut down without waiting" in str(state.message)
    assert _gone(worker), "its worker process was killed"
