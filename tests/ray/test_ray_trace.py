"""The trace file on ray: one event per attempt, on a track per Ray worker (node and
pid), retries as separate events."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from baton import flow, task

pytestmark = pytest.mark.usefixtures("ray_local")


@task
def square(x: int) -> int:
    return x * x


@task(retries=1)
def always_fails() -> None:
    raise ValueError("no")


def test_attempts_are_events_on_their_workers_tracks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    @flow(task_runner="ray")
    def traced() -> None:
        square.map(range(6))
        always_fails.submit()

    path = tmp_path / "run.json"
    monkeypatch.setenv("BATON_TRACE_FILE", str(path))
    assert traced(return_state=True).is_failed()
    events = json.loads(path.read_text())["traceEvents"]
    slices = [e for e in events if e["ph"] == "X" and e["cat"] != "flow"]
    assert Counter(e["args"]["task"] for e in slices) == {"square": 6, "always_fails": 2}
    failing = sorted(
        (e["args"]["attempt"], e["args"]["state"])
        for e in slices
        if e["args"]["task"] == "always_fails"
    )
    assert failing == [(1, "Retrying"), (2, "Failed")]
    assert all(e["args"]["worker"].startswith("node ") for e in slices)
    assert all(" pid " in e["args"]["worker"] for e in slices)
    processes = {e["pid"]: e["args"]["name"] for e in events if e["name"] == "process_name"}
    assert all(processes[e["pid"]] == e["args"]["worker"] for e in slices)
