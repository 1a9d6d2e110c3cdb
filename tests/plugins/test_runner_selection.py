"""Choosing a runner: by name, by name with options, an instance, a URL, the
`BATON_TASK_RUNNER` setting, and the errors for names nobody registered."""

from __future__ import annotations

import re
import subprocess
import sys
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
    assert "Its options: max_workers, resources." in message
    with pytest.raises(TypeError, match=re.escape("Its options: resources.")):
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


def test_an_unknown_name_from_the_setting_names_the_setting(
    fresh_plugins: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    @flow
    def unchosen() -> None:
        pass

    monkeypatch.setenv("BATON_TASK_RUNNER", "thred")
    with pytest.raises(UnknownRunnerError) as info:
        unchosen()
    assert str(info.value).startswith(
        "Unknown task runner 'thred' (from the BATON_TASK_RUNNER environment variable). "
        "Did you mean 'thread'?"
    )
    monkeypatch.setenv("BATON_TASK_RUNNER", "nosuch://host:1")
    with pytest.raises(UnknownRunnerError, match="'nosuch://host:1' \\(from the BATON_TASK_RUNNER"):
        unchosen()


def test_unknown_name_lists_the_installed_runners(fresh_plugins: None) -> None:
    installed = ", ".join(r.name for r in list_runners())
    with pytest.raises(UnknownRunnerError) as info:
        get_runner("no-such-runner")
    assert str(info.value) == (
        f"Unknown task runner 'no-such-runner'. Installed runners: {installed}."
    )


@pytest.mark.parametrize(
    ("given", "meant"),
    [("thred", "thread"), ("trhead", "thread"), ("Sync", "sync"), ("proces", "process")],
)
def test_an_unknown_name_suggests_the_closest_one(
    fresh_plugins: None, given: str, meant: str
) -> None:
    installed = ", ".join(r.name for r in list_runners())
    with pytest.raises(UnknownRunnerError) as info:
        get_runner(given)
    assert str(info.value) == (
        f"Unknown task runner {given!r}. Did you mean {meant!r}? Installed runners: {installed}."
    )


def test_an_unknown_url_scheme_suggests_the_closest_one(builtins_only: None) -> None:
    with pytest.raises(UnknownRunnerError, match=re.escape("Did you mean 'dask://'?")):
        get_runner("dsk://127.0.0.1:8786")


@pytest.mark.parametrize("name", ["dask", "ray"])
def test_unknown_first_party_name_gives_the_install_line(builtins_only: None, name: str) -> None:
    installed = ", ".join(r.name for r in list_runners())
    with pytest.raises(UnknownRunnerError) as info:
        get_runner(name)
    assert str(info.value) == (
        f"Unknown task runner {name!r}. Installed runners: {installed}. The {name!r} runner "
        f'is a plugin; install it with: pip install "baton-core[{name}]" (or, in a clone of '
        f"the Baton repository, from its root: pip install ./plugins/{name})"
    )

    with pytest.raises(UnknownRunnerError, match=re.escape(f'"baton-core[{name}]"')):

        @flow(task_runner=name)
        def wants_it() -> None:
            pass


def test_a_misspelt_runner_name_fails_where_the_flow_is_defined(fresh_plugins: None) -> None:
    def body() -> None:
        pass

    with pytest.raises(UnknownRunnerError, match=re.escape("'thred'. Did you mean 'thread'?")):
        flow(task_runner="thred")(body)
    with pytest.raises(UnknownRunnerError, match="none claims the URL scheme 'nosuch://'"):
        flow(task_runner="nosuch://host:1")(body)
    with pytest.raises(UnknownRunnerError, match="Unknown task runner 'thred'"):
        flow(task_runner="sync")(body).with_options(task_runner="thred")
    assert flow(task_runner=" thread ")(body)() is None


def test_defining_a_flow_for_dask_or_ray_imports_neither() -> None:
    """The check as a flow is defined loads entry points only, never a runner's module."""
    script = (
        "import sys\n"
        "from baton import UnknownRunnerError, flow\n"
        "for spec in ('dask', 'ray', 'dask://127.0.0.1:8786', 'ray://127.0.0.1:10001'):\n"
        "    try:\n"
        "        flow(task_runner=spec)(lambda: None)\n"
        "    except UnknownRunnerError:\n"
        "        pass  # the plugin is not installed here\n"
        "print(sorted(m for m in ('dask', 'distributed', 'ray') if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.strip() == "[]"


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
