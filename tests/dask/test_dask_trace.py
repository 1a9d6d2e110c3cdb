"""The trace file on dask: one event per attempt, on a track per Dask worker (its
address), retries as separate events."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from baton import flow, task
from baton_dask import DaskTaskRunner
from distributed import LocalCluster


@task
def square(x: int) -> int:
    return x * x


@task(retries=1)
def always_fails() -> None:
    raise ValueError("no")


def test_attempts_are_events_on_their_workers_tracks(
    cluster: LocalCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    @flow(task_runner=DaskTaskRunner(cluster.scheduler_address))
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
    workers = set(cluster.scheduler_info["workers"])
    assert {e["args"]["worker"] for e in slices} <= workers
    processes = {e["pid"]: e["args"]["name"] for e in events if e["name"] == "process_name"}
    assert all(processes[e["pid"]] == e["args"]["worker"] for e in slices)


def test_runs_that_end_at_once_are_on_their_workers_tracks(
    cluster: LocalCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Starts are sent in batches a few milliseconds on; these runs end well before that.
    @flow(task_runner=DaskTaskRunner(cluster.scheduler_address))
    def quick() -> None:
        square.map(range(40)).wait()
        always_fails.submit()

    path = tmp_path / "run.json"
    monkeypatch.setenv("BATON_TRACE_FILE", str(path))
    assert quick(return_state=True).is_failed()
    events = json.loads(path.read_text())["traceEvents"]
    slices = [e for e in events if e["ph"] == "X" and e["cat"] != "flow"]
    assert len(slices) == 42
    workers = set(cluster.scheduler_info["workers"])
    assert Counter(e["args"]["worker"] for e in slices).keys() <= workers
    tracks = {e["pid"]: e["args"]["name"] for e in events if e["name"] == "process_name"}
    assert "unknown worker" not in tracks.values()
