"""The examples in baton_dask's docstrings run as doctests."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["baton_dask", "baton_dask._options", "baton_dask._runner", "baton_dask._session"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    failed, attempted = doctest.testmod(module, optionflags=doctest.ELLIPSIS, report=False)
    assert failed == 0, f"{failed} of {attempted} docstring examples of {name} failed"


def test_the_examples_are_found() -> None:
    runner = importlib.import_module("baton_dask._runner")
    tests = doctest.DocTestFinder().find(runner)
    assert sum(len(t.examples) for t in tests) >= 7
