"""The `baton` command, run in-process: runners, plugins, run, --version, and its errors."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import baton
import pytest
from baton import list_runners
from baton._cli import main
from click.testing import CliRunner, Result

if TYPE_CHECKING:
    from conftest import Site

FLOWS = """
    import asyncio
    import threading

    from baton import current_task_run, flow, task

    @task
    def double(x):
        return 2 * x

    @task
    def runner_name():
        return current_task_run().scope.runner.name

    @flow
    def doubles(xs, offset=0):
        return [d + offset for d in double.map(xs).result()]

    @flow(name="which-runner")
    def which_runner():
        return runner_name.submit().result()

    @flow
    def echo(value, label="v"):
        return {"label": label, "value": value, "type": type(value).__name__}

    @flow
    def explode(message="boom"):
        raise ValueError(message)

    @flow
    async def async_sum(xs):
        await asyncio.sleep(0)
        return sum(double.map(xs).result())

    if __name__ == "__main__":
        raise SystemExit("the main block must not run")
"""


def invoke(*args: str) -> Result:
    params = inspect.signature(CliRunner.__init__).parameters
    runner = CliRunner(mix_stderr=False) if "mix_stderr" in params else CliRunner()  # type: ignore[call-arg]
    return runner.invoke(main, list(args), catch_exceptions=False)


@pytest.fixture
def flows_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_plugins: None
) -> Iterator[Path]:
    path = tmp_path / "cli_flows_module.py"
    path.write_text(textwrap.dedent(FLOWS))
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setenv("BATON_LOG_LEVEL", "WARNING")
    monkeypatch.setenv("BATON_PROGRESS", "0")
    before = set(sys.modules)
    yield path
    for name in set(sys.modules) - before:
        if str(getattr(sys.modules[name], "__file__", "") or "").startswith(str(tmp_path)):
            del sys.modules[name]


def test_version() -> None:
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"baton, version {baton.__version__}"


def test_runners_table(fresh_plugins: None) -> None:
    result = invoke("runners")
    assert result.exit_code == 0, result.stderr
    header, rule, *rows = result.stdout.splitlines()
    assert header.split() == ["NAME", "PLUGIN", "DISTRIBUTION", "VERSION", "CAPABILITIES", "URLS"]
    assert set(rule) <= {"-", " "}
    by_name = {row.split()[0]: row.split() for row in rows}
    assert by_name["thread"][:4] == ["thread", "baton.runners", "baton-core", baton.__version__]
    capabilities = {word.rstrip(",") for word in by_name["thread"][4:-1]}
    assert {"async", "nested", "priorities", "resources"} <= capabilities
    assert set(by_name) == {r.name for r in list_runners()}


def test_runners_json(fresh_plugins: None) -> None:
    result = invoke("runners", "--json")
    assert result.exit_code == 0
    runners = {r["name"]: r for r in json.loads(result.stdout)}
    assert runners["sync"]["distribution"] == "baton-core"
    assert runners["sync"]["capabilities"] == [
        "async",
        "limits",
        "nested",
        "priorities",
        "resources",
    ]
    assert runners["sync"]["error"] is None


def broken(site: Site) -> None:
    site.dist(
        "broken-plugin",
        {"broken": "broken_cli_pkg"},
        {"broken_cli_pkg": "raise RuntimeError('this plugin is broken on purpose')\n"},
    )


def test_plugins_json_reports_a_broken_plugin(site: Site) -> None:
    broken(site)
    result = invoke("plugins", "--json")
    assert result.exit_code == 0
    document = json.loads(result.stdout)
    plugins = {p["name"]: p for p in document["plugins"]}
    failed = plugins["broken"]
    assert failed["status"] == "failed"
    assert failed["distribution"] == "broken-plugin"
    assert failed["error"] == "RuntimeError: this plugin is broken on purpose"
    assert "Traceback (most recent call last)" in failed["traceback"]
    assert "broken_cli_pkg" in failed["traceback"]
    assert plugins["baton.runners"]["status"] == "loaded"
    assert {"thread", "sync"} <= set(plugins["baton.runners"]["runners"])
    assert document["conflicts"] == []


def test_plugins_table_shows_the_error_and_traceback(site: Site) -> None:
    broken(site)
    result = invoke("plugins")
    assert result.exit_code == 0
    assert "broken (broken-plugin 1.0) failed to load: RuntimeError" in result.stdout
    assert "Traceback (most recent call last)" in result.stdout
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()[2:] if line}
    assert rows["broken"][3] == "failed"


def test_runners_still_listed_with_a_broken_plugin(site: Site) -> None:
    broken(site)
    result = invoke("runners")
    assert result.exit_code == 0
    assert "thread" in result.stdout
    assert "Plugins that failed to load: broken (broken-plugin)" in result.stderr


def test_strict_mode_fails_cleanly(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    broken(site)
    monkeypatch.setenv("BATON_STRICT_PLUGINS", "1")
    result = invoke("runners")
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: Baton plugin 'broken' (broken-plugin 1.0)")
    assert "Traceback" not in result.stderr


def test_strict_mode_plugins_lists_them_then_fails(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken(site)
    monkeypatch.setenv("BATON_STRICT_PLUGINS", "1")
    result = invoke("plugins")
    assert result.exit_code == 1
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()[2:] if line}
    assert rows["broken"][3] == "failed"
    assert rows["baton.runners"][3] == "loaded"
    assert "broken (broken-plugin 1.0) failed to load: RuntimeError" in result.stdout
    assert "Traceback (most recent call last)" in result.stdout
    assert result.stderr.startswith("Error: Baton plugin 'broken' (broken-plugin 1.0)")

    as_json = invoke("plugins", "--json")
    assert as_json.exit_code == 1
    plugins = {p["name"]: p for p in json.loads(as_json.stdout)["plugins"]}
    assert plugins["broken"]["status"] == "failed"
    assert as_json.stderr.startswith("Error: Baton plugin 'broken'")


def test_a_plugin_taking_a_builtin_name_is_shown(site: Site) -> None:
    site.dist(
        "shadow-dist",
        {"shadow": "shadow_cli"},
        {
            "shadow_cli": """
                from baton import hookimpl

                @hookimpl
                def register_runners(register):
                    register("thread", "nowhere:Runner")
            """
        },
    )
    result = invoke("plugins")
    assert result.exit_code == 0
    assert (
        "Ignored: shadow (shadow-dist) registers 'thread', the name of a built-in runner; "
        "the built-in keeps it." in result.stdout
    )
    document = json.loads(invoke("plugins", "--json").stdout)
    assert document["ignored"] == [
        {"name": "thread", "plugin": "shadow", "distribution": "shadow-dist", "version": "1.0"}
    ]


def test_conflicts_are_shown(site: Site) -> None:
    for dist, package in (("first-dist", "first_cli"), ("second-dist", "second_cli")):
        site.dist(
            dist,
            {"twin": package},
            {
                package: """
                    from baton import hookimpl

                    @hookimpl
                    def register_runners(register):
                        register("twin", "nowhere:Runner")
                """
            },
        )
    result = invoke("plugins", "--json")
    [conflict] = json.loads(result.stdout)["conflicts"]
    assert conflict["name"] == "twin"
    assert [c["distribution"] for c in conflict["claimed_by"]] == ["first-dist", "second-dist"]
    table = invoke("runners")
    assert "'twin' is claimed by more than one plugin" in table.stderr


def test_run_with_params(flows_file: Path) -> None:
    result = invoke("run", f"{flows_file}:doubles", "--param", "xs=[1, 2, 3]", "-p", "offset=1")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout) == [3, 5, 7]


@pytest.mark.parametrize(
    ("given", "value", "type_name"),
    [
        ("3", 3, "int"),
        ("2.5", 2.5, "float"),
        ("true", True, "bool"),
        ("null", None, "NoneType"),
        ('{"a": [1]}', {"a": [1]}, "dict"),
        ("ada", "ada", "str"),
        ("[1, 2", "[1, 2", "str"),
        ("", "", "str"),
        ("a=b", "a=b", "str"),
    ],
)
def test_param_values_are_json_when_they_parse(
    flows_file: Path, given: str, value: object, type_name: str
) -> None:
    result = invoke("run", f"{flows_file}:echo", "-p", f"value={given}")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout) == {"label": "v", "value": value, "type": type_name}


def test_run_picks_the_runner(flows_file: Path) -> None:
    for runner in ("sync", "thread"):
        result = invoke("run", f"{flows_file}:which_runner", "--runner", runner)
        assert result.exit_code == 0, result.stderr
        assert result.stdout.strip() == runner


def test_run_by_flow_name(flows_file: Path) -> None:
    result = invoke("run", f"{flows_file}:which-runner", "-r", "sync")
    assert result.stdout.strip() == "sync"


def test_run_an_async_flow(flows_file: Path) -> None:
    result = invoke("run", f"{flows_file}:async_sum", "-p", "xs=[1,2]")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == "6"


def test_a_failed_flow_exits_non_zero_with_the_error(flows_file: Path) -> None:
    result = invoke("run", f"{flows_file}:explode", "-p", "message=kaput")
    assert result.exit_code == 1
    assert result.stderr.strip() == "Error: flow 'explode' ended in state Failed: ValueError: kaput"
    verbose = invoke("run", f"{flows_file}:explode", "--traceback")
    assert verbose.exit_code == 1
    assert "Traceback (most recent call last)" in verbose.stderr
    assert "raise ValueError(message)" in verbose.stderr


def test_an_unknown_flow_lists_the_flows_in_the_file(flows_file: Path) -> None:
    result = invoke("run", f"{flows_file}:nope")
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"Error: no flow named 'nope' in {str(flows_file)!r}. Flows in it: async_sum, doubles, "
        "echo, explode, which_runner."
    )


def test_a_file_with_several_flows_needs_a_name(flows_file: Path) -> None:
    result = invoke("run", str(flows_file))
    assert result.exit_code == 2
    assert "defines several flows (async_sum, doubles, echo, explode, which_runner)" in (
        result.stderr
    )


def test_a_file_with_one_flow_needs_no_name(flows_file: Path, tmp_path: Path) -> None:
    single = tmp_path / "cli_single_flow.py"
    single.write_text("from baton import flow\n\n@flow\ndef only():\n    return 'alone'\n")
    result = invoke("run", str(single))
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == "alone"


def test_unknown_runner(flows_file: Path, builtins_only: None) -> None:
    result = invoke("run", f"{flows_file}:doubles", "-p", "xs=[1]", "--runner", "dask")
    assert result.exit_code == 2
    assert "Unknown task runner 'dask'. Installed runners:" in result.stderr
    assert 'pip install "baton-core[dask]"' in result.stderr
    result = invoke("run", f"{flows_file}:doubles", "-p", "xs=[1]", "--runner", "nope")
    assert result.exit_code == 2
    assert "Invalid value for '--runner': Unknown task runner 'nope'" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["-p", "xs"], "'xs' is not KEY=VALUE"),
        (["-p", "=3"], "'=3' is not KEY=VALUE"),
        (["-p", "xs=1", "-p", "xs=2"], "'xs' is given twice"),
        (
            ["-p", "xs=[1]", "-p", "speed=3"],
            "flow 'doubles' has no parameter 'speed'. Its parameters: xs, offset.",
        ),
        ([], "flow 'doubles' needs 'xs': pass --param xs=VALUE."),
    ],
)
def test_bad_params(flows_file: Path, args: list[str], expected: str) -> None:
    result = invoke("run", f"{flows_file}:doubles", *args)
    assert result.exit_code == 2
    assert expected in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_files(tmp_path: Path, flows_file: Path) -> None:
    missing = invoke("run", str(tmp_path / "missing.py"))
    assert missing.exit_code == 2
    assert "no file" in missing.stderr
    directory = invoke("run", str(tmp_path))
    assert directory.exit_code == 2
    assert "is not a file" in directory.stderr

    syntax = tmp_path / "cli_bad_syntax.py"
    syntax.write_text("x = 1\ndef broken(:\n")
    result = invoke("run", f"{syntax}:broken")
    assert result.exit_code == 1
    assert f"could not load {str(syntax)!r}: line 2: SyntaxError" in result.stderr
    assert "Traceback" not in result.stderr

    raising = tmp_path / "cli_raises_on_import.py"
    raising.write_text("import os\n\nraise KeyError('no config')\n")
    result = invoke("run", str(raising))
    assert result.exit_code == 1
    assert "line 3: KeyError: 'no config'" in result.stderr

    empty = tmp_path / "cli_no_flows.py"
    empty.write_text("x = 1\n")
    result = invoke("run", str(empty))
    assert result.exit_code == 2
    assert "defines no flow (a function decorated with @flow)" in result.stderr


def test_import_baton_does_not_import_click() -> None:
    code = "import sys, baton; print('click' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_an_invalid_setting_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATON_PROGRESS", "sometimes")
    result = invoke("runners")
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: invalid setting: BATON_PROGRESS: Input should be")
    assert "Traceback" not in result.stderr
