"""The examples in the docstrings that the API reference shows run as doctests: those of
`baton`, and of `baton_dask` and `baton_ray` when they are installed."""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import inspect
import pkgutil
from collections.abc import Iterator
from types import ModuleType

import pytest

# The packages whose docstrings the reference pages (docs/reference/) render.
PACKAGES = ("baton", "baton_dask", "baton_ray")


def installed() -> list[str]:
    return [name for name in PACKAGES if importlib.util.find_spec(name) is not None]


def modules(package: str) -> Iterator[ModuleType]:
    root = importlib.import_module(package)
    yield root
    for info in pkgutil.walk_packages(root.__path__, prefix=f"{package}."):
        yield importlib.import_module(info.name)


def methods(package: str, module: ModuleType) -> Iterator[tuple[str, object]]:
    """Methods and properties of the classes defined in `module`. Public classes report
    their package as their module, so the finder would not look inside them."""
    for class_name, cls in vars(module).items():
        if not inspect.isclass(cls) or inspect.getmodule(cls) is not module:
            continue
        for attr, value in vars(cls).items():
            if isinstance(value, (classmethod, staticmethod)):
                value = value.__func__
            elif isinstance(value, property):
                value = value.fget
            if inspect.isfunction(value) and value.__doc__ and ">>>" in value.__doc__:
                yield f"{package}.{class_name}.{attr}", value


def docstring_tests() -> list[doctest.DocTest]:
    finder = doctest.DocTestFinder()
    found: dict[str | None, doctest.DocTest] = {}
    for package in installed():
        for module in modules(package):
            tests = finder.find(module)
            for name, method in methods(package, module):
                tests += finder.find(method, name, module=False, globs=dict(vars(module)))
            for test in tests:
                # Objects re-exported by their package are found twice; run each once.
                if test.examples:
                    found.setdefault(test.docstring, test)
    return sorted(found.values(), key=lambda t: t.name)


TESTS = docstring_tests()


def test_docstring_examples_are_found() -> None:
    names = {test.name.rsplit(".", 1)[-1] for test in TESTS}
    assert {"task", "flow", "wait", "get_runner", "TaskRunner", "with_options"} <= names
    if "baton_dask" in installed():
        assert {"DaskTaskRunner", "get_dask_client", "dask_options"} <= names
    if "baton_ray" in installed():
        assert {"RayTaskRunner", "remote_options"} <= names


def test_no_example_of_the_reference_is_skipped() -> None:
    skipped = [
        f"{test.name} (line {example.lineno + 1} of its docstring)"
        for test in TESTS
        for example in test.examples
        if example.options.get(doctest.SKIP)
    ]
    assert not skipped, f"docstring examples that do not run: {skipped}"


@pytest.mark.parametrize("test", TESTS, ids=[t.name for t in TESTS])
def test_docstring_example(test: doctest.DocTest) -> None:
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    report: list[str] = []
    result = runner.run(test, out=report.append, clear_globs=True)
    assert result.failed == 0, "".join(report)
