"""Fixtures for plugin tests: fake installed distributions on a temporary sys.path entry."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from baton import _plugins
from baton._plugins import _discovery


class Site:
    """A directory on sys.path where tests 'install' distributions: a ``*.dist-info``
    with ``METADATA`` and ``entry_points.txt``, plus the modules they point at."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def module(self, name: str, source: str) -> None:
        """Write module `name` (dotted names become packages)."""
        parts = name.split(".")
        directory = self.path
        for part in parts[:-1]:
            directory = directory / part
            directory.mkdir(exist_ok=True)
            (directory / "__init__.py").touch()
        (directory / f"{parts[-1]}.py").write_text(textwrap.dedent(source))

    def dist(
        self,
        name: str,
        entry_points: dict[str, str],
        modules: dict[str, str] | None = None,
        version: str = "1.0",
    ) -> None:
        """Install distribution `name` with `baton.plugins` entry points."""
        for module, source in (modules or {}).items():
            self.module(module, source)
        info = self.path / f"{name.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        lines = "".join(f"{ep} = {target}\n" for ep, target in entry_points.items())
        (info / "entry_points.txt").write_text(f"[baton.plugins]\n{lines}")


@pytest.fixture
def fresh_plugins(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Plugin discovery starts over, with no plugin setting from the environment."""
    for name in ("BATON_LOAD_PLUGINS", "BATON_STRICT_PLUGINS", "BATON_TASK_RUNNER"):
        monkeypatch.delenv(name, raising=False)
    _plugins.reset()
    yield
    _plugins.reset()


@pytest.fixture
def builtins_only(fresh_plugins: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Discovery sees only the core's own entry points, as where no plugin is installed."""
    every = metadata.entry_points

    def core_only(**params: Any) -> Any:
        return [ep for ep in every(**params) if _discovery.dist_name(ep) == "baton-core"]

    monkeypatch.setattr(metadata, "entry_points", core_only)


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_plugins: None) -> Iterator[Site]:
    """A temporary site directory first on sys.path; its modules are forgotten after."""
    path = tmp_path / "site"
    path.mkdir()
    monkeypatch.syspath_prepend(str(path))
    before = set(sys.modules)
    yield Site(path)
    for name in set(sys.modules) - before:
        module = sys.modules.get(name)
        if str(getattr(module, "__file__", "") or "").startswith(str(path)):
            del sys.modules[name]
