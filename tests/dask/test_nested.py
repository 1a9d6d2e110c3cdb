"""Tasks that submit and map tasks, and Dask collections inside tasks, on a cluster of one
worker with one thread: a task that waited on others while holding the only thread would
deadlock it, so these pass only if waiting tasks give their thread back to Dask."""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from baton import FlowRunFailed, State, flow, task, wait
from baton_dask import DaskTaskRunner, get_dask_client
from dask_clusters import local_cluster
from distributed import LocalCluster, get_worker
from otel_spans import hex_id, one, recorded_spans

TEXTS = [
    "Just visited #Paris! Contact me at visitor@example.com #travel #vacation",
    "Working on my new #project. Reach out at developer@example.com if interested!",
    "Happy to announce our company event #celebration #milestone email: events@company.org",
]
ANALYSIS = {
    "count_words": [9, 11, 10],
    "extract_emails": [["visitor@example.com"], ["developer@example.com"], ["events@company.org"]],
}


@pytest.fixture(scope="module")
def one_thread() -> Iterator[LocalCluster]:
    with local_cluster(n_workers=1, threads_per_worker=1) as cluster:
        yield cluster


@pytest.fixture
def runner(one_thread: LocalCluster) -> Iterator[DaskTaskRunner]:
    with DaskTaskRunner(one_thread.scheduler_address) as started:
        yield started


def count_words(text: str) -> int:
    return len(text.split())


def extract_emails(text: str) -> list[str]:
    return re.findall(r"[\w.+-]+@[\w-]+\.[\w.-]+", text)


@task
def analyze_texts(texts: list[str]) -> dict[str, list[Any]]:
    """The seed's nested mapped tasks, as the seed writes it."""
    futures = {op.__name__: task(op).map(texts) for op in [count_words, extract_emails]}
    wait([f for futs in futures.values() for f in futs])
    return {name: [f.result() for f in futs] for name, futs in futures.items()}


@task
def where() -> tuple[int, str]:
    return os.getpid(), get_worker().address


@task
def locate_children(n: int) -> list[tuple[int, str]]:
    return [f.result() for f in [where.submit() for _ in range(n)]]


@task
def countdown(n: int) -> int:
    if n == 0:
        return 0
    return countdown.submit(n - 1).result() + 1


@task
def bag_sum(n: int) -> int:
    import dask.bag as db

    with get_dask_client():
        return int(db.from_sequence(range(n), npartitions=4).map(lambda x: x * 2).sum().compute())


@task
def fail(message: str) -> None:
    raise ValueError(message)


@task
def leaves_a_failure() -> str:
    fail.submit("nobody looked")
    return "returned"


@task
def handles_a_failure() -> str:
    fail.submit("looked at").wait()
    return "returned"


@task(timeout_seconds=30)
def maps_under_a_timeout(xs: list[int]) -> list[int]:
    return double.map(xs).result()


@task
def double(x: int) -> int:
    return 2 * x


@task
async def async_where(_: int) -> tuple[int, str, bool]:
    import asyncio

    await asyncio.sleep(0)
    return (
        os.getpid(),
        get_worker().address,
        threading.current_thread() is not threading.main_thread(),
    )


def test_the_seeds_nested_map_runs_inside_tasks_on_one_thread(runner: DaskTaskRunner) -> None:
    @flow(task_runner=runner)
    def many() -> list[dict[str, list[Any]]]:
        return analyze_texts.map([TEXTS] * 4).result()

    assert many() == [ANALYSIS] * 4


def test_the_seeds_flow_as_written(runner: DaskTaskRunner) -> None:
    @flow(task_runner=runner)
    def run_text_analysis() -> dict[str, list[Any]]:
        return analyze_texts(texts=TEXTS)

    assert run_text_analysis() == ANALYSIS


def test_nested_runs_go_to_the_same_cluster(
    runner: DaskTaskRunner, one_thread: LocalCluster
) -> None:
    @flow(task_runner=runner)
    def nested() -> list[tuple[int, str]]:
        return locate_children.submit(3).result()

    children = nested()
    [worker] = one_thread.scheduler_info["workers"]
    assert [address for _, address in children] == [worker] * 3
    assert all(pid != os.getpid() for pid, _ in children)


def test_a_task_submits_and_waits_levels_deep(runner: DaskTaskRunner) -> None:
    @flow(task_runner=runner)
    def deep() -> int:
        return countdown.submit(5).result()

    assert deep() == 5


def test_nested_map_inside_a_task_with_a_timeout(runner: DaskTaskRunner) -> None:
    # The engine runs a task with a timeout in a helper thread: its waits must not deadlock.
    @flow(task_runner=runner)
    def timed() -> list[int]:
        return maps_under_a_timeout.submit([1, 2, 3]).result()

    assert timed() == [2, 4, 6]


def test_dask_collections_inside_a_task(runner: DaskTaskRunner) -> None:
    @flow(task_runner=runner)
    def collections() -> list[int]:
        return bag_sum.map([10, 100]).result()

    assert collections() == [90, 9900]


def test_get_dask_client_in_a_flow_is_the_runners(runner: DaskTaskRunner) -> None:
    @flow(task_runner=runner)
    def in_flow() -> tuple[bool, int]:
        import dask.bag as db

        with get_dask_client() as client:
            total = db.from_sequence(range(5), npartitions=2).sum().compute()
            return client is runner.client, int(total)

    assert in_flow() == (True, 10)


def test_get_dask_client_elsewhere_is_a_clear_error() -> None:
    @flow(task_runner="thread")
    def elsewhere() -> None:
        with get_dask_client():
            pass

    with pytest.raises(RuntimeError, match="running on the 'dask' task runner"):
        elsewhere()
    with pytest.raises(RuntimeError, match="running on the 'dask' task runner"), get_dask_client():
        pass


def test_async_tasks_run_on_dask_workers(runner: DaskTaskRunner, one_thread: LocalCluster) -> None:
    @flow(task_runner=runner)
    def run_async() -> list[tuple[int, str, bool]]:
        return async_where.map(range(3)).result()

    [worker] = one_thread.scheduler_info["workers"]
    for pid, address, off_main in run_async():
        assert pid != os.getpid() and address == worker and off_main


def test_a_failure_a_task_left_unhandled_fails_the_flow_not_the_task(
    runner: DaskTaskRunner,
) -> None:
    # Fire and forget: the task that left the failure completes; the flow fails naming it.
    seen: list[State] = []

    @flow(task_runner=runner)
    def nested_failures() -> str:
        left = leaves_a_failure.submit()
        left.wait()
        seen.append(left.state)
        return handles_a_failure.submit().result()

    with pytest.raises(FlowRunFailed, match=r"nothing in the flow handled them: 'fail-") as raised:
        nested_failures()
    [left] = seen
    assert left.is_completed() and left.result() == "returned", left
    assert "nobody looked" in str(raised.value)
    assert "looked at" not in str(raised.value)


def test_runs_and_the_runs_they_submit_are_in_the_flows_trace(
    runner: DaskTaskRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With OpenTelemetry on, the trace context travels with each run to its worker."""

    @task
    def trace_id() -> str:
        from opentelemetry import trace

        return format(trace.get_current_span().get_span_context().trace_id, "032x")

    @task(retries=1)
    def submits() -> list[str]:
        return [trace_id(), trace_id.submit().result()]

    @flow(task_runner=runner)
    def traced() -> list[str]:
        return [trace_id.submit().result(), *submits.submit().result()]

    with recorded_spans(monkeypatch) as spans:
        ids = traced()
    flow_span = one(spans.get_finished_spans(), "flow traced")
    assert ids == [hex_id(flow_span.context.trace_id)] * 3
