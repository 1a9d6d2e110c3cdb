"""The shape of the code: runners use only the public API, no runtime import cycle in
the core, no module too long to read."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CORE = ROOT / "core" / "src" / "baton"
RUNNER_SOURCES = [
    *sorted((ROOT / "plugins").glob("*/src")),
    *sorted((ROOT / "examples" / "plugins").glob("*/src")),
    *sorted((ROOT / "examples" / "plugins").glob("*/*.py")),
]
PRIVATE = re.compile(r"baton\._[A-Za-z]")
MAX_LINES = 750


def _python_files(where: Path) -> list[Path]:
    return [where] if where.is_file() else sorted(where.rglob("*.py"))


def test_runner_plugins_use_only_the_public_api() -> None:
    assert RUNNER_SOURCES, "no runner plugin sources found"
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for where in RUNNER_SOURCES
        for path in _python_files(where)
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if PRIVATE.search(line)
    ]
    assert not found, "plugins use private core names:\n" + "\n".join(found)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(CORE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _runtime_imports(path: Path, name: str, modules: set[str]) -> set[str]:
    """The baton modules `path` imports at run time: at the top or inside a function,
    but not under `if TYPE_CHECKING:`. ``from package import submodule`` depends on the
    submodule only: the package is the importer's parent, already being imported."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    class Imports(ast.NodeVisitor):
        def visit_If(self, node: ast.If) -> None:
            if "TYPE_CHECKING" in ast.unparse(node.test):
                for child in node.orelse:
                    self.visit(child)
            else:
                self.generic_visit(node)

        def visit_Import(self, node: ast.Import) -> None:
            found.update(alias.name for alias in node.names)

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            for alias in node.names:
                submodule = f"{module}.{alias.name}"
                found.add(submodule if submodule in modules else module)

    Imports().visit(tree)
    return {m for m in found if m == "baton" or m.startswith("baton.")}


def test_core_has_no_runtime_import_cycle() -> None:
    modules = {_module_name(p): p for p in CORE.rglob("*.py")}
    graph = {
        name: {m for m in _runtime_imports(path, name, set(modules)) if m in modules and m != name}
        for name, path in modules.items()
    }
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def walk(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                walk(nxt)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            walk(name)
    assert not cycles, "runtime import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize(
    "where", [CORE, *sorted((ROOT / "plugins").glob("*/src"))], ids=lambda p: p.name
)
def test_no_module_is_too_long(where: Path) -> None:
    long = {
        str(path.relative_to(ROOT)): count
        for path in where.rglob("*.py")
        if (count := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines: {long}"
