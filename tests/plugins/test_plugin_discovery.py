"""Discovery through the `baton.plugins` entry points: guarded loading, the allow-list,
strict mode, duplicate names, lazy runner references and the `register` callback."""

from __future__ import annotations

import re
import sys
import threading
import warnings
from typing import TYPE_CHECKING

import pytest
from baton import (
    BatonPluginWarning,
    PluginLoadError,
    TaskRunner,
    UnknownRunnerError,
    _plugins,
    flow,
    get_runner,
    list_plugins,
    list_runners,
    task,
)
from baton._runners.sync import SyncRunner
from baton._runners.thread import ThreadRunner

if TYPE_CHECKING:
    from conftest import Site

RUNNER_MODULE = """
    from baton import Capability, TaskRunner

    class {cls}(TaskRunner):
        name = "{name}"
        capabilities = frozenset({{Capability.NESTED}})

        def __init__(self, label="plain"):
            self.label = label

        def submit(self, run):
            run.execute()
"""

PLUGIN_MODULE = """
    from baton import hookimpl

    @hookimpl
    def register_runners(register):
        register("{name}", "{target}")
"""


def runner_plugin(site: Site, dist: str, name: str, package: str) -> None:
    """Install `dist` whose plugin registers runner `name` lazily from `package.runner`."""
    site.dist(
        dist,
        {name: f"{package}.plugin"},
        {
            f"{package}.runner": RUNNER_MODULE.format(cls="Runner", name=name),
            f"{package}.plugin": PLUGIN_MODULE.format(name=name, target=f"{package}.runner:Runner"),
        },
    )


def broken_plugin(site: Site, dist: str = "broken-plugin", package: str = "broken_pkg") -> None:
    site.dist(
        dist,
        {"broken": package},
        {package: "imported = True\nraise RuntimeError('this plugin is broken on purpose')\n"},
    )


@task
def thread_id() -> int:
    return threading.get_ident()


def test_builtin_runners_come_from_the_core_entry_point(fresh_plugins: None) -> None:
    runners = {r.name: r for r in list_runners()}
    for name, cls in (("thread", ThreadRunner), ("sync", SyncRunner)):
        info = runners[name]
        assert info.distribution == "baton-core"
        assert info.plugin == "baton.runners"
        assert info.load() is cls
    plugins = {p.name: p for p in list_plugins() if p.distribution == "baton-core"}
    assert {"baton.runners", "baton.logging", "baton.progress"} <= set(plugins)
    assert plugins["baton.runners"].runners[:2] == ("thread", "sync")
    assert all(p.status == "loaded" for p in plugins.values())


def test_an_installed_plugin_registers_its_runner(site: Site) -> None:
    runner_plugin(site, "acme-runners", "acme", "acme_pkg")
    info = {r.name: r for r in list_runners()}["acme"]
    assert (info.plugin, info.distribution, info.version) == ("acme", "acme-runners", "1.0")
    assert info.capabilities == ["nested"]
    runner = get_runner("acme", label="x")
    assert type(runner).__module__ == "acme_pkg.runner"
    assert runner.label == "x"  # type: ignore[attr-defined]

    @flow(task_runner="acme")
    def on_acme() -> int:
        return thread_id.submit().result()

    assert on_acme() == threading.get_ident()


def test_a_lazy_reference_is_imported_only_when_selected(site: Site) -> None:
    runner_plugin(site, "lazy-dist", "lazy", "lazy_pkg")
    assert "lazy" in [r.name for r in list_runners()]
    assert "lazy_pkg.plugin" in sys.modules
    assert "lazy_pkg.runner" not in sys.modules
    get_runner("lazy")
    assert "lazy_pkg.runner" in sys.modules


def test_a_broken_plugin_warns_and_everything_else_keeps_working(site: Site) -> None:
    broken_plugin(site)
    runner_plugin(site, "good-dist", "good", "good_pkg")
    with pytest.warns(BatonPluginWarning) as caught:
        names = [r.name for r in list_runners()]
    assert {"thread", "sync", "good"} <= set(names)
    [warning] = caught
    message = str(warning.message)
    assert "'broken' (broken-plugin 1.0) failed to load and was skipped" in message
    assert "RuntimeError: this plugin is broken on purpose" in message
    assert "BATON_STRICT_PLUGINS=1" in message
    [info] = [p for p in list_plugins() if p.name == "broken"]
    assert info.status == "failed"
    assert not info.loaded
    assert info.error == "RuntimeError: this plugin is broken on purpose"
    assert info.traceback is not None
    assert "broken_pkg" in info.traceback
    assert "RuntimeError" in info.traceback

    @flow(task_runner="good")
    def still_runs() -> str:
        return "ok"

    assert still_runs() == "ok"


def test_strict_mode_makes_a_broken_plugin_an_error(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken_plugin(site)
    monkeypatch.setenv("BATON_STRICT_PLUGINS", "1")
    with pytest.raises(PluginLoadError, match=re.escape("'broken' (broken-plugin 1.0)")) as info:
        get_runner("thread")
    assert "this plugin is broken on purpose" in str(info.value)
    assert isinstance(info.value.__cause__, RuntimeError)
    monkeypatch.setenv("BATON_STRICT_PLUGINS", "0")
    with pytest.warns(BatonPluginWarning):
        assert isinstance(get_runner("thread"), ThreadRunner)


def test_the_allow_list_decides_which_distributions_load(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken_plugin(site)
    runner_plugin(site, "acme-runners", "acme", "acme_pkg")
    runner_plugin(site, "other-runners", "other", "other_pkg")

    monkeypatch.setenv("BATON_LOAD_PLUGINS", "")
    assert {r.name for r in list_runners()} >= {"thread", "sync"}
    assert not {"acme", "other"} & {r.name for r in list_runners()}
    skipped = {p.distribution for p in list_plugins() if p.skipped}
    assert skipped >= {"acme-runners", "other-runners", "broken-plugin"}
    assert all(p.status == "skipped" for p in list_plugins() if p.distribution in skipped)
    # Not being allowed means not being imported at all: no code of the plugin ran.
    assert "broken_pkg" not in sys.modules
    assert "acme_pkg.plugin" not in sys.modules
    with pytest.raises(UnknownRunnerError, match="not in BATON_LOAD_PLUGINS, so not loaded"):
        get_runner("acme")

    # Names are compared the way distribution names are normalised.
    monkeypatch.setenv("BATON_LOAD_PLUGINS", " Acme_Runners , nothing-installed")
    with pytest.warns(BatonPluginWarning, match="'nothing-installed', which matches no"):
        names = {r.name for r in list_runners()}
    assert "acme" in names
    assert "other" not in names
    assert "broken_pkg" not in sys.modules

    monkeypatch.delenv("BATON_LOAD_PLUGINS")
    with pytest.warns(BatonPluginWarning, match="broken-plugin"):
        names = {r.name for r in list_runners()}
    assert {"acme", "other", "thread", "sync"} <= names


def test_two_plugins_claiming_one_name_is_an_error_naming_both(site: Site) -> None:
    runner_plugin(site, "first-dist", "twin", "first_pkg")
    runner_plugin(site, "second-dist", "twin", "second_pkg")
    with pytest.warns(BatonPluginWarning, match="Two plugins register a task runner named 'twin'"):
        names = [r.name for r in list_runners()]
    assert "twin" not in names
    assert "thread" in names
    with pytest.raises(PluginLoadError) as info:
        get_runner("twin")
    message = str(info.value)
    assert "Two plugins register a task runner named 'twin'" in message
    assert "plugin 'twin' (first-dist 1.0)" in message
    assert "plugin 'twin' (second-dist 1.0)" in message
    assert "BATON_LOAD_PLUGINS" in message
    assert [c.distribution for c in _plugins.list_conflicts()["twin"]] == [
        "first-dist",
        "second-dist",
    ]
    assert isinstance(get_runner("sync"), SyncRunner)


def test_duplicate_names_fail_loading_in_strict_mode(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner_plugin(site, "first-dist", "twin", "first_pkg")
    runner_plugin(site, "second-dist", "twin", "second_pkg")
    monkeypatch.setenv("BATON_STRICT_PLUGINS", "true")
    with pytest.raises(PluginLoadError, match=r"first-dist 1\.0.*second-dist 1\.0"):
        list_runners()


def test_a_plugin_taking_a_builtin_name_is_reported_and_the_builtin_keeps_it(
    site: Site,
) -> None:
    runner_plugin(site, "shadow-dist", "thread", "shadow_pkg")
    with pytest.warns(BatonPluginWarning) as caught:
        runners = {r.name: r for r in list_runners()}
    [warning] = caught
    message = str(warning.message)
    assert message.startswith(
        "Plugin 'thread' (shadow-dist 1.0) registers a task runner named 'thread', which is "
        "the name of a built-in runner (plugin 'baton.runners' (baton-core "
    )
    assert "The built-in keeps the name and the plugin's claim is ignored" in message
    assert runners["thread"].distribution == "baton-core"
    assert "thread" not in _plugins.list_conflicts()
    assert isinstance(get_runner("thread"), ThreadRunner)

    @flow
    def on_the_default_runner() -> bool:
        return thread_id.submit().result() != threading.get_ident()

    assert on_the_default_runner()


def test_strict_mode_makes_taking_a_builtin_name_an_error(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner_plugin(site, "shadow-dist", "thread", "shadow_pkg")
    monkeypatch.setenv("BATON_STRICT_PLUGINS", "1")
    with pytest.raises(PluginLoadError, match=r"\(shadow-dist 1\.0\) .*\(baton-core "):
        get_runner("thread")


def test_same_entry_point_name_in_two_distributions(site: Site) -> None:
    """Entry point names are chosen per distribution; a clash must not hide a plugin."""
    site.dist(
        "one-dist",
        {"plugin": "one_pkg"},
        {
            "one_pkg": PLUGIN_MODULE.format(name="one", target="one_pkg:Runner")
            + "\n"
            + RUNNER_MODULE.format(cls="Runner", name="one")
        },
    )
    site.dist(
        "two-dist",
        {"plugin": "two_pkg"},
        {
            "two_pkg": PLUGIN_MODULE.format(name="two", target="two_pkg:Runner")
            + "\n"
            + RUNNER_MODULE.format(cls="Runner", name="two")
        },
    )
    runners = {r.name: r.distribution for r in list_runners()}
    assert runners["one"] == "one-dist"
    assert runners["two"] == "two-dist"


def test_register_runners_that_raises_registers_nothing(site: Site) -> None:
    site.dist(
        "half-dist",
        {"half": "half_pkg"},
        {
            "half_pkg": """
                from baton import hookimpl

                @hookimpl
                def register_runners(register):
                    register("half", "half_pkg:Nothing")
                    raise ValueError("gave up halfway")
            """
        },
    )
    with pytest.warns(BatonPluginWarning, match="ValueError: gave up halfway"):
        names = [r.name for r in list_runners()]
    assert "half" not in names
    with pytest.raises(UnknownRunnerError, match=r"failed to load: half \(half-dist\)"):
        get_runner("half")


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        ('register("", "m:C")', "name must be a non-empty string"),
        ('register("x", object)', "must be a baton.TaskRunner subclass"),
        ('register("x", "no_colon")', "must look like 'package.module:ClassName'"),
        ('register("x://y", "m:C")', "looks like a URL"),
        ('register("x", "m:C"); register("x", "m:D")', "is registered twice"),
    ],
)
def test_register_rejects_bad_arguments(site: Site, call: str, expected: str) -> None:
    site.dist(
        "bad-dist",
        {"bad": "bad_pkg"},
        {
            "bad_pkg": f"""
                from baton import hookimpl

                @hookimpl
                def register_runners(register):
                    {call}
            """
        },
    )
    with pytest.warns(BatonPluginWarning, match=re.escape(expected)):
        list_runners()
    [info] = [p for p in list_plugins() if p.distribution == "bad-dist"]
    assert info.error is not None
    assert info.error.startswith("TypeError: register(): ")


def test_a_misspelt_hook_is_a_load_error(site: Site) -> None:
    site.dist(
        "typo-dist",
        {"typo": "typo_pkg"},
        {
            "typo_pkg": """
                from baton import hookimpl

                @hookimpl
                def register_runner(register):
                    register("typo", "typo_pkg:Nope")
            """
        },
    )
    with pytest.warns(BatonPluginWarning, match="'register_runner', which is not a Baton hook"):
        list_runners()
    [info] = [p for p in list_plugins() if p.distribution == "typo-dist"]
    assert info.error is not None
    # The list of real hooks helps spot the typo, and holds only real hooks.
    hooks = info.error.split("(the hooks are: ", 1)[1].rstrip(")").split(", ")
    assert hooks == [
        "flow_run_finished",
        "flow_run_started",
        "register_runners",
        "task_run_state_changed",
    ]


def test_a_lazy_reference_that_does_not_import_fails_when_selected(site: Site) -> None:
    site.dist(
        "ghost-dist",
        {"ghost": "ghost_pkg"},
        {"ghost_pkg": PLUGIN_MODULE.format(name="ghost", target="ghost_missing_module:Runner")},
    )
    assert "ghost" in [r.name for r in list_runners()]
    with pytest.raises(UnknownRunnerError) as info:
        get_runner("ghost")
    message = str(info.value)
    assert "Task runner 'ghost' (from plugin 'ghost' of ghost-dist 1.0)" in message
    assert "ModuleNotFoundError" in message


def test_a_reference_to_something_else_than_a_runner_fails_when_selected(site: Site) -> None:
    site.dist(
        "odd-dist",
        {"odd": "odd_pkg"},
        {
            "odd_pkg": PLUGIN_MODULE.format(name="odd", target="odd_pkg:NotARunner")
            + "\n    class NotARunner:\n        pass\n"
        },
    )
    with pytest.raises(UnknownRunnerError, match=re.escape("not a baton.TaskRunner subclass")):
        get_runner("odd")


def test_url_schemes_go_to_the_plugin_that_claims_them(site: Site) -> None:
    site.dist(
        "tcp-dist",
        {"tcp": "tcp_pkg"},
        {
            "tcp_pkg": """
                from baton import TaskRunner, hookimpl

                class TcpRunner(TaskRunner):
                    name = "tcp"
                    url_schemes = ("tcp",)

                    def __init__(self, address=None):
                        self.address = address

                    @classmethod
                    def from_url(cls, url):
                        return cls(address=url.split("://", 1)[1])

                    def submit(self, run):
                        run.execute()

                @hookimpl
                def register_runners(register):
                    register("tcp", TcpRunner)
            """
        },
    )
    runner = get_runner("tcp://127.0.0.1:8786")
    assert type(runner).__name__ == "TcpRunner"
    assert runner.address == "127.0.0.1:8786"  # type: ignore[attr-defined]
    assert {r.name: r.url_schemes for r in list_runners()}["tcp"] == ("tcp",)
    with pytest.raises(TypeError, match="Options cannot be combined with a URL"):
        get_runner("tcp://127.0.0.1:1", address="x")


def test_reset_discovers_newly_installed_plugins(site: Site) -> None:
    assert "late" not in [r.name for r in list_runners()]
    runner_plugin(site, "late-dist", "late", "late_pkg")
    assert "late" not in [r.name for r in list_runners()]
    _plugins.reset()
    assert "late" in [r.name for r in list_runners()]


def test_runner_info_capabilities_of_a_class_registered_directly(fresh_plugins: None) -> None:
    info = _plugins.RunnerInfo("x", ThreadRunner, "p", "d", "1")
    assert info.capabilities == ["async", "limits", "nested", "priorities", "resources"]
    assert issubclass(info.load(), TaskRunner)


def test_a_hook_with_parameters_the_hook_does_not_offer_is_a_load_error(site: Site) -> None:
    site.dist(
        "extra-dist",
        {"extra": "extra_pkg"},
        {
            "extra_pkg": """
                from baton import hookimpl

                @hookimpl
                def task_run_state_changed(task_run, state, runner):
                    pass
            """
        },
    )
    with pytest.warns(BatonPluginWarning, match="'extra' \\(extra-dist 1.0\\) failed to load"):
        list_runners()
    [info] = [p for p in list_plugins() if p.distribution == "extra-dist"]
    assert info.error is not None
    assert "runner" in info.error
    assert "extra_pkg" not in [
        getattr(p, "__name__", "") for p in _plugins.plugin_manager().get_plugins()
    ]


def test_a_plugin_that_looks_up_runners_while_loading_is_reported(site: Site) -> None:
    site.dist(
        "eager-dist",
        {"eager": "eager_pkg"},
        {"eager_pkg": "from baton import get_runner\n\nDEFAULT = get_runner('thread')\n"},
    )
    runner_plugin(site, "good-dist", "good", "good_pkg")
    with pytest.warns(BatonPluginWarning, match="while plugins were still loading"):
        names = {r.name for r in list_runners()}
    assert {"good", "thread"} <= names
    [info] = [p for p in list_plugins() if p.distribution == "eager-dist"]
    assert info.status == "failed"


def test_a_first_party_plugin_left_out_by_the_allow_list_is_not_to_install_again(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner_plugin(site, "baton-dask", "dask", "fake_baton_dask")
    monkeypatch.setenv("BATON_LOAD_PLUGINS", "")
    with pytest.raises(UnknownRunnerError) as info:
        get_runner("dask")
    message = str(info.value)
    assert message.startswith("Unknown task runner 'dask'. Installed runners: ")
    # (other plugins installed here may be listed beside it)
    assert re.search(
        r" Installed but not in BATON_LOAD_PLUGINS, so not loaded: "
        r"[\w, -]*\bbaton-dask\b[\w, -]*\.$",
        message,
    ), message
    assert "pip install" not in message

    monkeypatch.setenv("BATON_LOAD_PLUGINS", "baton-dask")
    assert "dask" in {r.name for r in list_runners()}


def test_plugin_warnings_point_at_the_code_that_looked_runners_up(site: Site) -> None:
    broken_plugin(site)
    runner_plugin(site, "shadow-dist", "thread", "shadow_pkg")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        list_runners()
    assert len(caught) == 2
    assert {w.category for w in caught} == {BatonPluginWarning}
    assert {w.filename for w in caught} == {__file__}

    _plugins.reset()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")

        @flow(task_runner="sync")  # the name is checked here, which discovers plugins
        def defined() -> None:
            pass

    assert len(caught) == 2
    assert {w.filename for w in caught} == {__file__}


def test_an_allow_list_name_that_matches_no_plugin_is_reported(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner_plugin(site, "acme-runners", "acme", "acme_pkg")
    monkeypatch.setenv("BATON_LOAD_PLUGINS", "acme-runner")
    with pytest.warns(BatonPluginWarning) as caught:
        names = {r.name for r in list_runners()}
    assert "acme" not in names
    [warning] = caught
    message = str(warning.message)
    assert message.startswith(
        "BATON_LOAD_PLUGINS names 'acme-runner', which matches no installed plugin "
        "distribution. Installed plugins: "
    )
    assert "acme-runners" in message.split("Installed plugins: ")[1]
    assert warning.filename == __file__

    monkeypatch.setenv("BATON_STRICT_PLUGINS", "1")
    with pytest.raises(PluginLoadError, match="'acme-runner', which matches no installed"):
        list_runners()
