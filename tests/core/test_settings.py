"""Settings: BATON_ environment variables, validated, read when used."""

from __future__ import annotations

import pytest
from baton import flow, task
from baton._settings import Settings, get_settings
from pydantic import ValidationError


def test_defaults() -> None:
    settings = Settings()
    assert settings.task_runner == "thread"
    assert settings.log_level == "INFO"
    assert settings.thread_max_workers is None
    assert settings.map_max_in_flight == 10_000


def test_settings_follow_the_environment_when_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATON_TASK_RUNNER", "sync")
    assert get_settings().task_runner == "sync"
    monkeypatch.setenv("BATON_TASK_RUNNER", "thread")
    assert get_settings().task_runner == "thread"


def test_settings_follow_variables_in_any_case_and_their_removal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("BATON_TASK_RUNNER", raising=False)
    monkeypatch.setenv("baton_task_runner", "sync")
    assert get_settings().task_runner == "sync"
    monkeypatch.setenv("Baton_Task_Runner", "process")
    monkeypatch.delenv("baton_task_runner")
    assert get_settings().task_runner == "process"
    monkeypatch.delenv("Baton_Task_Runner")
    assert get_settings().task_runner == "thread"


def test_invalid_setting_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATON_THREAD_MAX_WORKERS", "0")
    with pytest.raises(ValidationError, match="thread_max_workers"):
        get_settings()
    monkeypatch.setenv("BATON_THREAD_MAX_WORKERS", "2")
    monkeypatch.setenv("BATON_LOG_LEVEL", "LOUD")
    with pytest.raises(ValidationError, match="log_level"):
        get_settings()


def test_task_runner_setting_picks_the_runner_of_flows_that_did_not_choose(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    @task
    def runner_name() -> str:
        from baton import current_task_run

        run = current_task_run()
        assert run is not None
        return run.scope.runner.name

    @flow
    def unchosen() -> str:
        return runner_name.submit().result()

    @flow(task_runner="thread")
    def chosen() -> str:
        return runner_name.submit().result()

    monkeypatch.setenv("BATON_TASK_RUNNER", "sync")
    assert unchosen() == "sync"
    assert chosen() == "thread"
    monkeypatch.delenv("BATON_TASK_RUNNER")
    assert unchosen() == "thread"
