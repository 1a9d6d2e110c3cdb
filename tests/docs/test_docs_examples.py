"""Every executable code block of the documentation runs, and prints what its page shows.

The rules for code blocks are in `docs_harness`.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("sybil", reason="the docs examples need sybil: run `tox -e docs`")

import docs_harness
from docs_harness import DOCS, ExampleFailed, Unit, all_units, blocks, pages, parse, units

UNITS = all_units()

# Pages of reference material or prose, with no example of their own to run.
WITHOUT_EXAMPLES = {
    "benchmarks.md",
    "reference/api.md",
    "reference/dask.md",
    "reference/hooks.md",
    "reference/ray.md",
    "reference/runners.md",
    "reliability.md",
    "runners/matrix.md",
}


@pytest.fixture(autouse=True)
def plain_environment() -> Iterator[None]:
    """Examples run with Baton's defaults, whatever the shell running the tests set, and
    what an example sets in `os.environ` does not outlive it."""
    saved = {k: v for k, v in os.environ.items() if k.upper().startswith("BATON_")}
    for name in saved:
        del os.environ[name]
    try:
        yield
    finally:
        for name in [k for k in os.environ if k.upper().startswith("BATON_")]:
            del os.environ[name]
        os.environ.update(saved)


@pytest.mark.parametrize("unit", UNITS, ids=[unit.id for unit in UNITS])
def test_example(unit: Unit) -> None:
    unit.run()


def test_every_page_with_code_runs_an_example() -> None:
    for path in pages():
        name = path.relative_to(DOCS).as_posix()
        executed = [b for b in blocks(parse(path)) if b.language in docs_harness.EXECUTED]
        if name in WITHOUT_EXAMPLES:
            continue
        assert executed, f"{name} runs no example; fence whole examples as python"


def test_every_code_block_is_of_a_known_kind() -> None:
    known = {*docs_harness.EXECUTED, *docs_harness.NOT_EXECUTED}
    for path in pages():
        for block in blocks(parse(path)):
            assert block.language in known, (path, block.line, block.language)


# -- the harness itself fails when a page is wrong ----------------------------------------


def page_units(tmp_path: Path, text: str) -> list[Unit]:
    page = tmp_path / "page.md"
    page.write_text(textwrap.dedent(text))
    return list(units(parse(page)))


def test_a_broken_example_fails(tmp_path: Path) -> None:
    [unit] = page_units(
        tmp_path,
        """
        # A page

        ```python
        from baton import task

        @task
        def half(x):
            return x / 0

        half(1)
        ```
        """,
    )
    with pytest.raises(ZeroDivisionError) as caught:
        unit.run()
    # The traceback points at the page's own line.
    assert any(entry.lineno + 1 == 9 for entry in caught.traceback), caught.traceback


def test_output_that_differs_fails(tmp_path: Path) -> None:
    [unit] = page_units(
        tmp_path,
        """
        ```python
        print(6 * 7)
        ```

        ```output
        41
        ```
        """,
    )
    with pytest.raises(ExampleFailed, match="printed otherwise"):
        unit.run()


def test_output_may_elide_with_an_ellipsis(tmp_path: Path) -> None:
    [unit] = page_units(
        tmp_path,
        """
        ```python
        print("score: 0.123456")
        ```

        ```output
        score: 0.1...
        ```
        """,
    )
    unit.run()


def test_printing_without_showing_it_fails(tmp_path: Path) -> None:
    [unit] = page_units(tmp_path, '```python\nprint("hidden")\n```\n')
    with pytest.raises(ExampleFailed, match="no output block shows it"):
        unit.run()


def test_output_without_a_python_block_fails(tmp_path: Path) -> None:
    [unit] = page_units(tmp_path, "```output\n42\n```\n")
    with pytest.raises(ExampleFailed, match="must follow a python block"):
        unit.run()


def test_unknown_block_kind_fails(tmp_path: Path) -> None:
    [unit] = page_units(tmp_path, "```Python\nprint(1)\n```\n")
    with pytest.raises(ExampleFailed, match="unknown kind 'Python'"):
        unit.run()


def test_fragments_are_not_run(tmp_path: Path) -> None:
    units_ = page_units(tmp_path, "```py\nraise SystemExit(1)\n```\n\n```text\n$ nothing\n```\n")
    assert units_ == []


def test_console_runs_the_page_files_and_compares_output(tmp_path: Path) -> None:
    good, bad = page_units(
        tmp_path,
        """
        ```python title="hello.py"
        from baton import flow

        @flow
        def hello(name: str = "world") -> str:
            return f"hello {name}"

        if __name__ == "__main__":
            print(hello())
        ```

        ```output
        hello world
        ```

        ```console
        $ python hello.py
        hello world
        $ baton run hello.py --param name=ada
        hello ada
        ```

        ```console
        $ baton run hello.py --param name=ada
        hello bob
        ```
        """,
    )[1:]
    good.run()
    with pytest.raises(ExampleFailed, match="printed otherwise"):
        bad.run()


def test_console_refuses_other_programs(tmp_path: Path) -> None:
    [unit] = page_units(tmp_path, "```console\n$ rm -rf build\n```\n")
    with pytest.raises(ExampleFailed, match="run `baton` and `python` only"):
        unit.run()
