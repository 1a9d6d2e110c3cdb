"""The example third-party plugin in examples/plugins/baton-inline-runner, discovered
through its entry point (in-process; test_installed_plugins.py installs it with pip)."""

from __future__ import annotations

import ast
import io
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from baton import InvalidOptionsError, flow, get_runner, list_runners, task

if TYPE_CHECKING:
    from conftest import Site

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "plugins" / "baton-inline-runner"


@pytest.fixture
def inline(site: Site, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The example plugin 'installed': its source on sys.path, its metadata in `site`."""
    site.dist("baton-inline-runner", {"inline": "baton_inline_runner.plugin"}, version="0.1.0")
    monkeypatch.syspath_prepend(str(EXAMPLE / "src"))
    yield
    for name in [n for n in sys.modules if n.partition(".")[0] == "baton_inline_runner"]:
        del sys.modules[name]


@task
def thread_id(x: int) -> tuple[int, int]:
    return x, threading.get_ident()


def test_listed_with_its_distribution_and_capabilities(inline: None) -> None:
    info = {r.name: r for r in list_runners()}["inline"]
    assert (info.plugin, info.distribution, info.version) == (
        "inline",
        "baton-inline-runner",
        "0.1.0",
    )
    assert info.url_schemes == ("inline",)
    assert "baton_inline_runner.runner" not in sys.modules  # registered lazily
    assert info.capabilities == ["async", "nested"]


def test_select_by_name_and_run_a_flow(inline: None) -> None:
    @flow(task_runner="inline")
    def on_inline(xs: list[int]) -> list[tuple[int, int]]:
        return thread_id.map(xs).result()

    here = threading.get_ident()
    assert on_inline([1, 2]) == [(1, here), (2, here)]


def test_options_and_url(inline: None) -> None:
    stream = io.StringIO()

    @task
    def inc(x: int) -> int:
        return x + 1

    @flow(task_runner=get_runner("inline", trace=True, stream=stream))
    def traced() -> list[int]:
        return inc.map([1, 2]).result()

    assert traced() == [2, 3]
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert all(line.startswith("inline: running 'inc-") for line in lines)

    assert get_runner("inline://?trace=1").trace is True  # type: ignore[attr-defined]
    assert get_runner("inline://").trace is False  # type: ignore[attr-defined]
    with pytest.raises(InvalidOptionsError, match="It takes the form inline://"):
        get_runner("inline://host:1")
    with pytest.raises(InvalidOptionsError, match="use 1 or 0"):
        get_runner("inline://?trace=maybe")
    with pytest.raises(InvalidOptionsError, match="trace: must be True or False"):
        get_runner("inline", trace="yes")


def test_written_only_against_the_public_api() -> None:
    for path in (EXAMPLE / "src").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith("baton._"), f"{path}: {node.module}"
            if isinstance(node, ast.Import):
                for alias in node.names:
                    assert not alias.name.startswith("baton._"), f"{path}: {alias.name}"
    assert (EXAMPLE / "src" / "baton_inline_runner" / "py.typed").exists()
    pyproject = (EXAMPLE / "pyproject.toml").read_text()
    assert 'build-backend = "hatchling.build"' in pyproject
    assert '[project.entry-points."baton.plugins"]' in pyproject
