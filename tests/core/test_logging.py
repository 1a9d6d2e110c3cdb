"""Run logging: flow and task run lines in the seeds' format, level and volume settings."""

from __future__ import annotations

import logging
import re

import pytest
from baton import flow, task


@task
def step(x: int) -> int:
    if x < 0:
        raise ValueError(f"negative: {x}")
    return x


def _messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "baton"]


def test_flow_and_task_run_lines(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="baton")

    @flow
    def run_text_analysis() -> None:
        step.map([1, 2]).result()

    run_text_analysis()
    lines = _messages(caplog)
    begin = re.fullmatch(
        r"Flow run '([a-z]+-[a-z]+)' - Beginning flow run '\1' for flow 'run-text-analysis'",
        lines[0],
    )
    assert begin, lines[0]
    task_lines = [line for line in lines if line.startswith("Task run")]
    assert len(task_lines) == 2
    assert all(
        re.fullmatch(r"Task run 'step-[0-9a-f]{3}' - Finished in state Completed\(\)", line)
        for line in task_lines
    )
    assert lines[-1] == f"Flow run '{begin.group(1)}' - Finished in state Completed()"


def test_failures_are_logged_as_errors(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="baton")

    @flow
    def handles() -> None:
        step.submit(-1).wait()

    handles()
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "Finished in state Failed('ValueError: negative: -1')" in errors[0].getMessage()


def test_log_level_setting(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("BATON_LOG_LEVEL", "WARNING")

    @flow
    def quiet() -> None:
        step.submit(1).result()

    quiet()
    assert _messages(caplog) == []


def test_completed_task_lines_are_limited_per_flow_run(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.INFO, logger="baton")
    monkeypatch.setenv("BATON_TASK_RUN_LOG_LIMIT", "5")

    @flow
    def busy() -> None:
        step.map(range(20)).result()
        step.submit(-2).wait()

    busy()
    lines = _messages(caplog)
    completed = [
        line for line in lines if "Finished in state Completed()" in line and "Task" in line
    ]
    assert len(completed) == 5
    assert any("Failed('ValueError: negative: -2')" in line for line in lines)
    assert any(
        "15 more task runs completed (only the first 5 were logged" in line for line in lines
    )
