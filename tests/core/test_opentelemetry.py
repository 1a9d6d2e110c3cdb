"""OpenTelemetry spans (``BATON_OPENTELEMETRY=true``): a flow run is a span, each attempt
of a task run a child span, and the task's own code runs inside its attempt's span, in
this process and on the workers of the ``process`` runner."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator

import pytest
from baton import flow, task
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from otel_spans import current_trace_id, hex_id, one, recorded_spans, trace


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    with recorded_spans(monkeypatch) as exporter:
        yield exporter


@pytest.mark.parametrize("runner", ["thread", "sync"])
def test_a_flow_run_is_a_span_and_each_attempt_a_child_span(
    spans: InMemorySpanExporter, runner: str
) -> None:
    calls = []

    @task(retries=2)
    def flaky(x: int) -> int:
        calls.append(x)
        if len(calls) < 3:
            raise ValueError(f"attempt {len(calls)} failed")
        return x

    @task
    def steady(x: int) -> int:
        return x

    @flow(task_runner=runner)
    def traced() -> int:
        return flaky.submit(1).result() + steady.submit(2).result()

    assert traced() == 3
    finished = spans.get_finished_spans()
    flow_span = one(finished, "flow traced")
    assert flow_span.parent is None
    assert flow_span.attributes is not None
    assert flow_span.attributes["baton.flow"] == "traced"
    assert flow_span.attributes["baton.runner"] == runner
    assert flow_span.attributes["baton.state"] == "Completed"
    assert flow_span.status.status_code is StatusCode.UNSET

    attempts = sorted(
        (s for s in finished if s.name == "task flaky"),
        key=lambda s: s.attributes["baton.attempt"] if s.attributes else 0,
    )
    assert [s.attributes["baton.attempt"] for s in attempts if s.attributes] == [1, 2, 3]
    assert [s.attributes["baton.state"] for s in attempts if s.attributes] == [
        "Failed",
        "Failed",
        "Completed",
    ]
    assert [s.status.status_code for s in attempts] == [
        StatusCode.ERROR,
        StatusCode.ERROR,
        StatusCode.UNSET,
    ]
    assert [e.attributes["exception.message"] for e in attempts[0].events if e.attributes] == [
        "attempt 1 failed"
    ]
    children = [*attempts, one(finished, "task steady")]
    for span in children:
        assert span.parent is not None and span.parent.span_id == flow_span.context.span_id
        assert span.context.trace_id == flow_span.context.trace_id
        assert span.attributes is not None
        assert span.attributes["baton.task_run"].startswith(span.name.removeprefix("task "))
        assert span.attributes["baton.runner"] == runner
        host, pid, thread_name = str(span.attributes["baton.worker"]).split(":", 2)
        assert (host, pid) == (socket.gethostname(), str(os.getpid()))
        assert thread_name == "MainThread" if runner == "sync" else thread_name.startswith("baton")
    assert len(finished) == 5


def test_a_failed_run_makes_an_error_span_and_so_does_the_flow(
    spans: InMemorySpanExporter,
) -> None:
    @task
    def broken() -> None:
        raise KeyError("missing")

    @flow(task_runner="thread")
    def failing() -> None:
        broken()

    with pytest.raises(KeyError):
        failing()
    finished = spans.get_finished_spans()
    attempt = one(finished, "task broken")
    assert attempt.status.status_code is StatusCode.ERROR
    assert [e.name for e in attempt.events] == ["exception"]
    assert attempt.events[0].attributes is not None
    assert attempt.events[0].attributes["exception.type"] == "KeyError"
    flow_span = one(finished, "flow failing")
    assert flow_span.status.status_code is StatusCode.ERROR
    assert flow_span.attributes is not None and flow_span.attributes["baton.state"] == "Failed"


def test_spans_a_task_makes_nest_under_its_attempt(spans: InMemorySpanExporter) -> None:
    tracer = trace.get_tracer("tests")

    @task
    def inner() -> str:
        with tracer.start_as_current_span("inner work"):
            return threading.current_thread().name

    @task
    def outer() -> str:
        with tracer.start_as_current_span("outer work"):
            return inner.submit().result()

    @task
    async def waits() -> None:
        with tracer.start_as_current_span("async work"):
            pass

    @flow(task_runner="thread")
    def nested() -> str:
        waits.submit().result()
        return outer.submit().result()

    assert nested().startswith("baton-thread")
    finished = spans.get_finished_spans()

    def parent_of(name: str) -> str:
        span = one(finished, name)
        assert span.parent is not None
        parents = [s for s in finished if s.context.span_id == span.parent.span_id]
        assert len(parents) == 1
        return parents[0].name

    assert parent_of("inner work") == "task inner"
    assert parent_of("task inner") == "outer work"  # submitted inside the user's span
    assert parent_of("outer work") == "task outer"
    assert parent_of("task outer") == "flow nested"
    assert parent_of("async work") == "task waits"
    assert parent_of("task waits") == "flow nested"
    assert {s.context.trace_id for s in finished} == {one(finished, "flow nested").context.trace_id}


def test_on_process_workers_a_task_runs_in_its_flows_trace(spans: InMemorySpanExporter) -> None:
    @task(retries=1)
    def seen() -> str:
        return current_trace_id()

    @flow(task_runner="process")
    def remote() -> list[str]:
        return [seen.submit().result() for _ in range(2)]

    ids = remote()
    flow_span = one(spans.get_finished_spans(), "flow remote")
    assert ids == [hex_id(flow_span.context.trace_id)] * 2


def test_runs_outside_a_traced_flow_make_no_spans(
    spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    @task
    def plain() -> str:
        return current_trace_id()

    assert plain() == hex_id(0)
    monkeypatch.setenv("BATON_OPENTELEMETRY", "false")

    @flow(task_runner="thread")
    def untraced() -> str:
        return plain.submit().result()

    assert untraced() == hex_id(0)
    assert spans.get_finished_spans() == ()


def test_off_opentelemetry_is_not_even_imported() -> None:
    script = textwrap.dedent(
        """
        import sys
        from baton import flow, task

        @task
        def double(x):
            return 2 * x

        @flow(task_runner="thread")
        def doubles():
            return double.map(range(3)).result()

        assert doubles() == [0, 2, 4]
        print(sorted(m for m in sys.modules if m.startswith("opentelemetry")))
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATON_")}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    assert done.stdout == "[]\n"


def test_on_without_opentelemetry_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BATON_OPENTELEMETRY", "1")
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    ran = []

    @flow(task_runner="thread")
    def wanted_traces() -> None:
        ran.append(True)

    with pytest.raises(ImportError, match=r'pip install "baton-core\[otel\]"'):
        wanted_traces()
    assert ran == []


def test_an_async_flow_is_a_span_too(spans: InMemorySpanExporter) -> None:
    import asyncio

    @task
    async def later(x: int) -> str:
        await asyncio.sleep(0)
        return current_trace_id()

    @flow(task_runner="thread")
    async def waiting() -> list[str]:
        return [await later(1), await later.submit(2)]

    ids = asyncio.run(waiting())
    finished = spans.get_finished_spans()
    flow_span = one(finished, "flow waiting")
    assert ids == [hex_id(flow_span.context.trace_id)] * 2
    attempts = [s for s in finished if s.name == "task later"]
    assert len(attempts) == 2
    assert all(
        s.parent is not None and s.parent.span_id == flow_span.context.span_id for s in attempts
    )
