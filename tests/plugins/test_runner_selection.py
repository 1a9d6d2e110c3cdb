"""Choosing a runner: by name, by name with options, an instance, a URL, the
`BATON_TASK_RUNNER` setting, and the errors for names nobody registered."""

from __future__ import annotations

import re
import threading

import pytest
from baton import (
    InvalidOptionsError,
    UnknownRunnerError,
    flow,
    get_runner,
    list_runners,
    task,
)
from baton._runners.sync import SyncRunner
from baton._runners.thread import ThreadRunner


@task
def thread_id() -> int:
    return threading.get_ident()


def ran_in_this_thread(task_runner: object) -> bool:
    @flow(task_runner=task_runner)  # type: ignore[call-overload]
    def probe() -> int:
        return thread_id.submit().result()

    return bool(probe() == threading.get_ident())


def test_by_name(fresh_plugins: None) -> None:
    assert ran_in_this_thread("sync")
    assert not ran_in_this_thread("thread")


def test_by_name_with_options(fresh_plugins: None) -> None:
    runner = get_runner("thread", max_workers=2)
    assert isinstance(runner, ThreadRunner)
    assert runner.max_workers == 2
    assert not runner.started
    assert not ran_in_this_thread(runner)
    assert not runner.started  # each flow run works on its own copy


def test_an_instance_and_a_class(fresh_plugins: None) -> None:
    assert ran_in_this_thread(SyncRunner())
    assert ran_in_this_thread(SyncRunner)


def test_options_a_runner_does_not_take_are_named(fresh_plugins: None) -> None:
    with pytest.raises(TypeError) as info:
        get_runner("thread", workers=2)
    message = str(info.value)
    assert "Task runner 'thread' (ThreadRunner) does not accept these options" in message
    assert "'workers'" in message
    assert "Its options: max_workers." in message
    with pytest.raises(TypeError, match=re.escape("Its options: none.")):
        get_runner("sync", max_workers=2)
    with pytest.raises(InvalidOptionsError, match="max_workers"):
        get_runner("thread", max_workers=0)


def test_the_setting_overrides_the_default_only(
    fresh_plugins: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    @flow
    def unchosen() -> int:
        return thread_id.submit().result()

    @flow(task_runner="thread")
    def chosen() -> int:
        return thread_id.submit().result()

    here = threading.get_ident()
    monkeypatch.setenv("BATON_TASK_RUNNER", "sync")
    assert unchosen() == here
    assert chosen() != here
    monkeypatch.setenv("BATON_TASK_RUNNER", "no-such-runner")
    with pytest.raises(UnknownRunnerError, match="Unknown task runner 'no-such-runner'"):
        unchosen()


def test_unknown_name_lists_the_installed_runners(fresh_plugins: None) -> None:
    installed = ", ".join(r.name for r in list_runners())
    with pytest.raises(UnknownRunnerError) as info:
        get_runner("trhead")
    assert str(info.value) == f"Unknown task runner 'trhead'. Installed runners: {installed}."


@pytest.mark.parametrize("name", ["dask", "ray"])
def test_unknown_first_party_name_gives_the_install_line(builtins_only: None, name: str) -> None:
    installed = ", ".join(r.name for r in list_runners())
    with pytest.raises(UnknownRunnerError) as info:
        get_runner(name)
    assert str(info.value) == (
        f"Unknown task runner {name!r}. Installed runners: {installed}. The {name!r} runner "
        f'is a plugin; install it with: pip install "baton-core[{name}]"'
    )

    @flow(task_runner=name)
    def wants_it() -> None:
        pass

    with pytest.raises(UnknownRunnerError, match=re.escape(f'"baton-core[{name}]"')):
        wants_it()


def test_unknown_url_scheme(builtins_only: None) -> None:
    with pytest.raises(UnknownRunnerError) as info:
        get_runner("dask://127.0.0.1:8786")
    message = str(info.value)
    assert message.startswith(
        "No installed task runner accepts 'dask://127.0.0.1:8786': none claims the URL "
        "scheme 'dask://'."
    )
    assert 'pip install "baton-core[dask]"' in message


@pytest.mark.parametrize("bad", ["", "   ", None, 3])
def test_a_runner_name_must_be_a_string(fresh_plugins: None, bad: object) -> None:
    with pytest.raises(UnknownRunnerError, match="must be a non-empty string such as 'thread'"):
        get_runner(bad)  # type: ignore[arg-type]


def test_a_task_runner_of_the_wrong_type_is_refused(fresh_plugins: None) -> None:
    with pytest.raises(InvalidOptionsError, match="task_runner: must be a runner name"):
        flow(task_runner=42)  # type: ignore[call-overload]
