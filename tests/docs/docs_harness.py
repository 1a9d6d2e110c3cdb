"""Runs the code blocks of the documentation pages (docs/**/*.md), parsed with Sybil.

Every fenced code block names its kind in its info string, and the kind decides
what the tests do with it:

- ``python``: a whole example. It runs on its own, in a fresh namespace, as a script
  (``__name__ == "__main__"``). What it prints must be shown in an ``output`` block
  after it, so that nothing it prints goes unchecked.
- ``output``: what the ``python`` block before it prints, compared exactly (a
  ``...`` stands for any text, as in doctest).
- ``console``: shell lines (``$ baton ...`` or ``$ python FILE``, optionally after
  ``NAME=value`` variables), each followed by what it prints, compared like ``output``.
  They run in a fresh folder holding the page's ``python title="FILE"`` blocks above
  them, with no ``BATON_`` variables but the ones the line sets. Baton's log lines
  (on stderr) are left out of the comparison.
- Not run, by design: ``py`` (a fragment of Python that is not a whole example),
  ``text``, ``bash`` (commands to type, such as installs), ``toml``.

A block of any other kind, or of none, fails the tests.
"""

from __future__ import annotations

import contextlib
import doctest
import io
import os
import re
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from sybil import Document, Example, Region, Sybil
from sybil.parsers.markdown.lexers import RawFencedCodeBlockLexer

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
COMMAND_TIMEOUT = 120

EXECUTED = ("python", "output", "console")
NOT_EXECUTED = {
    "py": "a fragment of Python, not a whole example",
    "text": "plain text: log lines, tracebacks, tables",
    "bash": "shell commands to type, such as installs",
    "toml": "configuration files",
}

INFO = re.compile(r"(?P<language>[^\s`{]*)[ \t]*(?P<attributes>[^\n]*)\n")
TITLE = re.compile(r'title="(?P<title>[^"]+)"')
LOG_LINE = re.compile(r"^\d{2}:\d{2}:\d{2}\.\d{3} \| [A-Z ]{7} \| ")
CHECKER = doctest.OutputChecker()
FLAGS = doctest.ELLIPSIS


class ExampleFailed(AssertionError):
    """An executed block of a page did not do what the page shows."""


@dataclass(frozen=True)
class Block:
    """One fenced code block of a page."""

    language: str
    attributes: str
    source: str
    line: int  # of the opening fence, 1-based

    @property
    def title(self) -> str | None:
        match = TITLE.search(self.attributes)
        return match["title"] if match else None


def _lex(document: Document) -> Iterable[Region]:
    lexer = RawFencedCodeBlockLexer(info_pattern=INFO)
    for region in lexer(document):
        line = document.text.count("\n", 0, region.start) + 1
        block = Block(
            region.lexemes["language"],
            region.lexemes["attributes"].strip(),
            str(region.lexemes["source"]),
            line,
        )
        yield Region(
            region.start, region.end, parsed=block, evaluator=EVALUATORS.get(block.language)
        )


SYBIL = Sybil(parsers=[_lex], patterns=["*.md"], path=str(DOCS))


def pages(root: Path = DOCS) -> list[Path]:
    return sorted(root.rglob("*.md"))


def parse(path: Path) -> Document:
    return SYBIL.parse(path)


def blocks(document: Document) -> list[Block]:
    return [example.parsed for example in document.examples()]


def where(example: Example | Document, line: int | None = None) -> str:
    path = Path(example.path)
    try:
        shown = path.relative_to(REPO)
    except ValueError:
        shown = path
    return f"{shown}:{line if line is not None else example.line}"  # type: ignore[union-attr]


# -- evaluators -------------------------------------------------------------------------


def _trim(text: str) -> str:
    # Pages cannot show trailing spaces reliably, so they do not count.
    return "".join(f"{line.rstrip()}\n" for line in text.splitlines())


def _compare(expected: str, got: str, what: str) -> None:
    expected, got = _trim(expected), _trim(got)
    if not CHECKER.check_output(expected, got, FLAGS):
        example = doctest.Example("", expected)
        raise ExampleFailed(f"{what}\n{CHECKER.output_difference(example, got, FLAGS)}")


def run_python(example: Example) -> None:
    block: Block = example.parsed
    # Leading newlines put tracebacks on the page's own line numbers.
    code = compile("\n" * block.line + block.source, example.path, "exec")
    namespace = {"__name__": "__main__", "__file__": block.title or example.path}
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        exec(code, namespace)
    example.namespace["stdout"] = buffer.getvalue()


def check_output(example: Example) -> None:
    got = example.namespace.pop("stdout", None)
    if got is None:
        raise ExampleFailed(f"{where(example)}: an output block must follow a python block")
    _compare(example.parsed.source, got, f"{where(example)}: the example above printed otherwise")


@dataclass
class Command:
    line: int
    text: str
    expected: list[str] = field(default_factory=list)


def _commands(block: Block) -> list[Command]:
    commands: list[Command] = []
    for offset, text in enumerate(block.source.splitlines(), start=1):
        if text.startswith("$ "):
            commands.append(Command(block.line + offset, text[2:]))
        elif not commands:
            raise ExampleFailed(f"line {block.line + offset}: a console block starts with '$ '")
        else:
            commands[-1].expected.append(text)
    return commands


def _argv(command: Command) -> tuple[list[str], dict[str, str]]:
    words = shlex.split(command.text)
    env: dict[str, str] = {}
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
        name, _, value = words.pop(0).partition("=")
        env[name] = value
    if not words:
        raise ExampleFailed(f"line {command.line}: no command in {command.text!r}")
    program, rest = words[0], words[1:]
    if program == "baton":
        run = "from baton._cli import main; main(prog_name='baton')"
        return [sys.executable, "-c", run, *rest], env
    if program == "python":
        return [sys.executable, *rest], env
    raise ExampleFailed(
        f"line {command.line}: console blocks run `baton` and `python` only, not {program!r}; "
        "fence other commands as bash"
    )


def _page_files(example: Example, folder: Path) -> None:
    for other in example.document.examples():
        if other.start >= example.start:
            break
        block: Block = other.parsed
        if block.language == "python" and block.title:
            (folder / block.title).write_text(block.source)


def run_console(example: Example) -> None:
    block: Block = example.parsed
    commands = _commands(block)
    with tempfile.TemporaryDirectory(prefix="baton-docs-") as tmp:
        folder = Path(tmp)
        _page_files(example, folder)
        for command in commands:
            argv, assigned = _argv(command)
            env = {k: v for k, v in os.environ.items() if not k.upper().startswith("BATON_")}
            env.update(assigned)
            env["PYTHONDONTWRITEBYTECODE"] = "1"
            done = subprocess.run(
                argv,
                cwd=folder,
                env=env,
                capture_output=True,
                text=True,
                timeout=COMMAND_TIMEOUT,
                check=False,
            )
            errors = "".join(
                line for line in done.stderr.splitlines(keepends=True) if not LOG_LINE.match(line)
            )
            expected = "".join(f"{line}\n" for line in command.expected)
            _compare(
                expected,
                done.stdout + errors,
                f"{where(example, command.line)}: `{command.text}` (exit code "
                f"{done.returncode}) printed otherwise",
            )


EVALUATORS = {"python": run_python, "output": check_output, "console": run_console}


# -- units: what one test runs ----------------------------------------------------------


@dataclass
class Unit:
    """A python block with the output block that shows what it prints, or a console block."""

    examples: list[Example]
    error: str | None = None

    @property
    def id(self) -> str:
        return where(self.examples[0]).removeprefix("docs/")

    def run(self) -> None:
        if self.error is not None:
            raise ExampleFailed(self.error)
        for example in self.examples:
            example.evaluate()
        printed = self.examples[0].namespace.pop("stdout", None)
        if printed:
            raise ExampleFailed(
                f"{self.id}: the example prints {printed!r} but no output block shows it; add "
                "one after it"
            )


def units(document: Document) -> Iterator[Unit]:
    current: Unit | None = None
    for example in document.examples():
        language = example.parsed.language
        if language == "output":
            last = current.examples[-1].parsed.language if current else None
            if current is None or last != "python":
                yield Unit(
                    [example], f"{where(example)}: an output block must follow a python block"
                )
            else:
                current.examples.append(example)
            continue
        if current is not None:
            yield current
            current = None
        if language == "python":
            current = Unit([example])
        elif language == "console":
            yield Unit([example])
        elif language not in NOT_EXECUTED:
            known = ", ".join([*EXECUTED, *NOT_EXECUTED])
            yield Unit(
                [example],
                f"{where(example)}: code block of unknown kind {language!r}; use one of {known}",
            )
        else:
            # A fence between a python block and an output block breaks their pairing.
            current = None
    if current is not None:
        yield current


def all_units(root: Path = DOCS) -> list[Unit]:
    return [unit for path in pages(root) for unit in units(parse(path))]
