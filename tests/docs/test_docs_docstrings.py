"""The examples in Baton's docstrings, which the API reference shows, run as doctests."""

from __future__ import annotations

import doctest
import importlib
import inspect
import pkgutil
from collections.abc import Iterator
from types import ModuleType

import baton
import pytest


def modules() -> Iterator[ModuleType]:
    yield baton
    for info in pkgutil.walk_packages(baton.__path__, prefix="baton."):
        yield importlib.import_module(info.name)


def methods(module: ModuleType) -> Iterator[tuple[str, object]]:
    """Methods and properties of the classes defined in `module`. Public classes report
    the `baton` module as theirs, so the finder would not look inside them."""
    for class_name, cls in vars(module).items():
        if not inspect.isclass(cls) or inspect.getmodule(cls) is not module:
            continue
        for attr, value in vars(cls).items():
            if isinstance(value, (classmethod, staticmethod)):
                value = value.__func__
            elif isinstance(value, property):
                value = value.fget
            if inspect.isfunction(value) and value.__doc__ and ">>>" in value.__doc__:
                yield f"baton.{class_name}.{attr}", value


def docstring_tests() -> list[doctest.DocTest]:
    finder = doctest.DocTestFinder()
    found: dict[str | None, doctest.DocTest] = {}
    for module in modules():
        tests = finder.find(module)
        for name, method in methods(module):
            tests += finder.find(method, name, module=False, globs=dict(vars(module)))
        for test in tests:
            # Objects re-exported by `baton` are found twice; run each docstring once.
            if test.examples:
                found.setdefault(test.docstring, test)
    return sorted(found.values(), key=lambda t: t.name)


TESTS = docstring_tests()


def test_docstring_examples_are_found() -> None:
    names = {test.name.rsplit(".", 1)[-1] for test in TESTS}
    assert {"task", "flow", "wait", "get_runner", "TaskRunner", "with_options"} <= names


@pytest.mark.parametrize("test", TESTS, ids=[t.name for t in TESTS])
def test_docstring_example(test: doctest.DocTest) -> None:
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    report: list[str] = []
    result = runner.run(test, out=report.append, clear_globs=True)
    assert result.failed == 0, "".join(report)
