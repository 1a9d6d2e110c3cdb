"""BATON_TRACE_FILE: each flow run written as a Chrome trace, one event per attempt on a
track per worker, with arrows from upstream runs, parents and earlier attempts."""

from __future__ import annotations

import json
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from baton import State, TaskRun, flow, get_runner, hookimpl, task
from baton._plugins import plugin_manager
from baton.testing._rendezvous import Rendezvous
from click.testing import CliRunner


@task
def square(x: int) -> int:
    return x * x


@task
def add(x: int, y: int) -> int:
    return x + y


@task(retries=2)
def always_fails(x: int) -> int:
    raise ValueError(f"no {x}")


@task
def meet(rendezvous: Rendezvous, me: str) -> str:
    rendezvous.meet(me, ("left", "right"))
    return me


@task
def parent() -> int:
    return square.submit(7).result()


def traced_flow(runner: Any) -> Any:
    @flow(task_runner=runner)
    def traced() -> None:
        squares = square.map(range(4))
        add.submit(squares[0], squares[1])
        always_fails.submit(1)

    return traced


def load(path: Path) -> dict[str, Any]:
    trace: dict[str, Any] = json.loads(path.read_text())
    return trace


def slices(trace: dict[str, Any], task_name: str | None = None) -> list[dict[str, Any]]:
    return [
        e
        for e in trace["traceEvents"]
        if e["ph"] == "X" and e["cat"] != "flow" and task_name in (None, e["args"]["task"])
    ]


def names(trace: dict[str, Any], kind: str) -> dict[tuple[int, int], str]:
    """Process (kind "process_name", keyed (pid, 0)) or thread names by (pid, tid)."""
    return {
        (e["pid"], e["tid"]): e["args"]["name"]
        for e in trace["traceEvents"]
        if e["ph"] == "M" and e["name"] == kind
    }


def arrows(trace: dict[str, Any], category: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(start, finish) flow event pairs of a category."""
    starts = {e["id"]: e for e in trace["traceEvents"] if e["ph"] == "s" and e["cat"] == category}
    return [
        (starts[e["id"]], e)
        for e in trace["traceEvents"]
        if e["ph"] == "f" and e["cat"] == category
    ]


def on_slice(point: dict[str, Any], events: list[dict[str, Any]]) -> dict[str, Any]:
    """The slice a flow event binds to: on its track, starting at its time."""
    [bound] = [
        e
        for e in events
        if (e["pid"], e["tid"], e["ts"]) == (point["pid"], point["tid"], point["ts"])
    ]
    return bound


@pytest.mark.parametrize("runner_name", ["thread", "sync", "process"])
def test_one_event_per_attempt_with_arrows_from_upstream_runs(
    runner_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "run.json"
    monkeypatch.setenv("BATON_TRACE_FILE", str(path))
    state = traced_flow(runner_name)(return_state=True)
    assert state.is_failed()

    trace = load(path)
    assert trace["otherData"]["task_runner"] == runner_name
    events = slices(trace)
    assert Counter(e["args"]["task"] for e in events) == {
        "square": 4,
        "add": 1,
        "always_fails": 3,
    }
    failing = sorted(slices(trace, "always_fails"), key=lambda e: e["args"]["attempt"])
    assert [(e["args"]["attempt"], e["args"]["state"]) for e in failing] == [
        (1, "Retrying"),
        (2, "Retrying"),
        (3, "Failed"),
    ]
    assert {e["args"]["retries"] for e in failing} == {2}
    assert [e["ts"] for e in failing] == sorted(e["ts"] for e in failing)
    # Every slice sits on a named track of a named worker.
    processes, threads = names(trace, "process_name"), names(trace, "thread_name")
    for event in events:
        assert (event["pid"], 0) in processes
        assert (event["pid"], event["tid"]) in threads
        assert processes[event["pid"], 0] == event["args"]["worker"]
    # Arrows: the two squares into add, and attempt to attempt of the failing run.
    [added] = slices(trace, "add")
    upstream = arrows(trace, "upstream")
    assert len(upstream) == 2
    sources = {on_slice(start, events)["args"]["run"] for start, _ in upstream}
    assert len(sources) == 2 and all(name.startswith("square-") for name in sources)
    assert {on_slice(finish, events)["args"]["run"] for _, finish in upstream} == {
        added["args"]["run"]
    }
    retry = arrows(trace, "retry")
    assert [on_slice(finish, events)["args"]["attempt"] for _, finish in retry] == [2, 3]


def test_thread_tracks_are_the_threads_that_ran_the_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, str] = {}
    lock = threading.Lock()

    class Workers:
        @hookimpl
        def task_run_state_changed(self, task_run: TaskRun, state: State) -> None:
            if state.is_final():
                with lock:
                    seen[task_run.name] = str(task_run.worker)

    @task
    def where() -> str:
        return threading.current_thread().name

    @flow(task_runner=get_runner("thread", max_workers=2))
    def threads() -> list[str]:
        return [where.submit().result() for _ in range(3)]

    path = tmp_path / "run.json"
    monkeypatch.setenv("BATON_TRACE_FILE", str(path))
    workers = Workers()
    plugin_manager().register(workers)
    try:
        ran_on = threads()
    finally:
        plugin_manager().unregister(workers)
    events = slices(load(path))
    assert sorted(e["args"]["worker"] for e in events) == sorted(ran_on)
    assert {e["args"]["run"]: e["args"]["worker"] for e in events} == seen


def test_two_process_workers_are_two_tracks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "rv").mkdir()
    rendezvous = Rendezvous(tmp_path / "rv")

    @flow(task_runner=get_runner("process", max_workers=2))
    def both() -> list[str]:
        return [meet.submit(rendezvous, side) for side in ("left", "right")]  # type: ignore[misc]

    path = tmp_path / "run.json"
    monkeypatch.setenv("BATON_TRACE_FILE", str(path))
    assert both() == ["left", "right"]
    trace = load(path)
    events = slices(trace)
    assert len(events) == 2
    assert len({e["pid"] for e in events}) == 2
    processes = names(trace, "process_name")
    assert sorted(processes[e["pid"], 0] for e in events) == sorted(
        e["args"]["worker"] for e in events
    )
    assert all(e["args"]["worker"].startswith("pid ") for e in events)


def test_nested_runs_point_back_to_their_parent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    @flow(task_runner="sync")
    def nesting() -> int:
        return parent()

    path = tmp_path / "run.json"
    monkeypatch.setenv("BATON_TRACE_FILE", str(path))
    assert nesting() == 49
    trace = load(path)
    events = slices(trace)
    [outer] = slices(trace, "parent")
    [inner] = slices(trace, "square")
    # On sync the nested run runs inside its parent, on the same track: drawn inside it.
    assert (inner["pid"], inner["tid"]) == (outer["pid"], outer["tid"])
    assert outer["ts"] <= inner["ts"] and inner["ts"] + inner["dur"] <= outer["ts"] + outer["dur"]
    [(start, finish)] = arrows(trace, "nested")
    assert on_slice(start, events) is outer or on_slice(start, events) == outer
    assert on_slice(finish, events) == inner


def test_runs_that_never_ran_are_instants_on_the_flow_track(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    @flow(task_runner="thread")
    def downstream() -> None:
        square.submit(always_fails.submit(0))

    path = tmp_path / "run.json"
    monkeypatch.setenv("BATON_TRACE_FILE", str(path))
    assert downstream(return_state=True).is_failed()
    [instant] = [e for e in load(path)["traceEvents"] if e["ph"] == "i"]
    assert instant["args"]["state"] == "UpstreamFailed"
    assert instant["args"]["task"] == "square"


def test_the_path_names_the_flow_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    @flow(flow_run_name="run-{n}")
    def numbered(n: int) -> int:
        return square(n)

    monkeypatch.setenv("BATON_TRACE_FILE", str(tmp_path / "{flow}" / "{flow_run}.json"))
    numbered(1)
    numbered(2)
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.json"))
    assert written == ["numbered/run-1.json", "numbered/run-2.json"]


def test_unset_it_records_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from baton import _observe

    monkeypatch.delenv("BATON_TRACE_FILE", raising=False)
    monkeypatch.delenv("BATON_REPORT_FILE", raising=False)
    assert not _observe.observes_task_runs()
    monkeypatch.setenv("BATON_TRACE_FILE", "")
    assert not _observe.observes_task_runs()
    monkeypatch.setenv("BATON_TRACE_FILE", str(tmp_path / "t.json"))
    assert _observe.observes_task_runs()


def test_an_unwritable_path_is_logged_and_the_flow_result_stands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")

    @flow
    def fine() -> int:
        return square(3)

    monkeypatch.setenv("BATON_TRACE_FILE", str(blocker / "run.json"))
    assert fine() == 9
    assert "could not write its trace" in caplog.text


def test_the_run_command_takes_trace_and_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from baton._cli import main

    script = tmp_path / "flows.py"
    script.write_text(
        "from baton import flow, task\n\n"
        "@task\ndef double(x):\n    return 2 * x\n\n"
        "@flow(task_runner='sync')\ndef doubles(n: int = 3):\n    return double.map(range(n))\n"
    )
    monkeypatch.delenv("BATON_TRACE_FILE", raising=False)
    result = CliRunner().invoke(
        main,
        [
            "run",
            f"{script}:doubles",
            "--trace",
            str(tmp_path / "t.json"),
            "--report",
            str(tmp_path / "r.html"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert len(slices(load(tmp_path / "t.json"))) == 3
    assert "<canvas" in (tmp_path / "r.html").read_text()
    import os

    assert "BATON_TRACE_FILE" not in os.environ
