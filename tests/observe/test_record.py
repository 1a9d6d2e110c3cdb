"""The record a trace and a report are made from: a flow run without retries is built on
a shorter path, which must give exactly what the general one gives."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from baton import flow, task
from baton._observe import _flat, _model
from baton._observe._flat import flat_trace as _flat_trace
from baton._observe._report import html_report
from baton._observe._trace import chrome_trace


@task
def square(x: int) -> int:
    return x * x


@task
def add(x: int, y: int) -> int:
    return x + y


@task
def fails(x: int) -> int:
    raise ValueError(f"no {x}")


@task(task_run_name="named-{x}")
def named(x: int) -> int:
    return x


@task
def parent() -> int:
    return square.submit(7).result()


def recorded(runner: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    """The flow run, its final state and its recorder, as the trace was made."""
    seen: list[Any] = []
    build = _model.FlowRecord.build.__func__  # type: ignore[attr-defined]

    def keep(cls: Any, flow_run: Any, state: Any, recorder: Any) -> Any:
        seen.append((flow_run, state, recorder))
        return build(cls, flow_run, state, recorder)

    monkeypatch.setattr(_model.FlowRecord, "build", classmethod(keep))
    monkeypatch.setenv("BATON_TRACE_FILE", str(tmp_path / "run.json"))
    futures: list[Any] = []

    @flow(task_runner=runner)
    def mixed() -> None:
        squares = square.map(range(20))
        futures.extend(squares)
        total = add.submit(squares[0], squares[1])
        failed = fails.submit(3)
        add.submit(failed, total)  # UpstreamFailed: never runs
        named.map(range(3))
        parent.submit()

    assert mixed(return_state=True).is_failed()
    [found] = seen
    # Names read only now: the record made the default ones itself.
    return (*found, {future.name for future in futures})


@pytest.mark.parametrize("runner", ["thread", "sync", "process"])
def test_the_short_path_builds_what_the_general_one_does(
    runner: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    flow_run, state, recorder, square_names = recorded(runner, monkeypatch, tmp_path)
    assert not recorder.retried
    assert _model._single_attempts(recorder) is not None
    short = _model.FlowRecord.build(flow_run, state, recorder)
    recorder.retried = True  # as if a run had been retried: the general path
    general = _model.FlowRecord.build(flow_run, state, recorder)
    assert chrome_trace(short) == chrome_trace(general)
    assert html_report(short) == html_report(general)
    names = {run.name for run in short.runs.values()}
    assert {"named-0", "named-1", "named-2"} | square_names <= names
    assert all(run.name != f"run #{run.id}" for run in short.runs.values())


def _unheard(starts: list[Any]) -> None:
    del starts[3:6]  # the second run's RUNNING, as if it was never heard


def _nowhere(starts: list[Any]) -> None:
    starts[5] = None  # the second run's RUNNING, heard without its worker


@pytest.mark.parametrize("runner", ["thread", "sync"])
@pytest.mark.parametrize("change", [None, _unheard, _nowhere])
def test_a_flow_run_of_lone_runs_is_written_as_from_its_record(
    runner: str, change: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    seen: list[Any] = []
    build = _model.FlowRecord.build.__func__  # type: ignore[attr-defined]

    def keep(cls: Any, flow_run: Any, state: Any, recorder: Any) -> Any:
        seen.append((flow_run, state, recorder))
        return build(cls, flow_run, state, recorder)

    monkeypatch.setattr(_model.FlowRecord, "build", classmethod(keep))
    monkeypatch.setattr(_flat, "flat_trace", lambda *args: None)  # the general path
    path = tmp_path / "run.json"
    monkeypatch.setenv("BATON_TRACE_FILE", str(path))

    @flow(task_runner=runner)
    def lone() -> None:
        square.map(range(300))
        named.map(range(5))

    lone()
    [(flow_run, state, recorder)] = seen
    if change is not None:
        change(recorder.starts)
        path.write_text(chrome_trace(_model.FlowRecord.build(flow_run, state, recorder)))
    text = _flat_trace(flow_run, state, recorder)
    assert text is not None
    assert text == path.read_text()
    assert len(json.loads(text)["traceEvents"]) > 305
