"""Fixtures of the reliability suite: the runner under test, started once per test module
(for dask and ray, on one cluster per module), and the report of the fault tests.

``BATON_RELIABILITY_RUNNERS`` chooses the runners (see `reliability_support`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from baton import TaskRunner
from reliability_support import Report, build_runner, cluster_for, selected_runners

_REPORT = Report()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _REPORT.write()


@pytest.fixture(scope="session")
def report() -> Report:
    return _REPORT


@pytest.fixture(autouse=True)
def _quiet_logs(monkeypatch: pytest.MonkeyPatch) -> None:
    # One log line per task run would cost more than the runs of a load test.
    monkeypatch.setenv("BATON_LOG_LEVEL", "WARNING")


@pytest.fixture(scope="module", params=selected_runners())
def runner_name(request: pytest.FixtureRequest) -> str:
    """The name of the runner under test (tests narrow it with an indirect parametrize)."""
    name: str = request.param
    return name


@pytest.fixture(scope="module")
def cluster(runner_name: str) -> Iterator[Any]:
    """The cluster the runner works on (dask, ray), started once for the module."""
    with cluster_for(runner_name) as started:
        yield started


@pytest.fixture(scope="module")
def runner(runner_name: str, cluster: Any) -> Iterator[TaskRunner]:
    """The runner under test, started once for the module; flows given it use it as it is
    and leave it running."""
    started = build_runner(runner_name, cluster).start()
    try:
        yield started
    finally:
        started.shutdown(wait=True)
