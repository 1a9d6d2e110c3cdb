"""MkDocs hooks: pages whose content is generated from the code, so it cannot drift.

A page asks for generated content with a marker line:

- ``<!-- generated: settings-table -->``: every field of `baton._settings.Settings`,
  with its ``BATON_`` variable, type, default and description.
- ``<!-- generated: cli-reference -->``: the help of the ``baton`` command and of
  each of its subcommands, as click prints it.
- ``<!-- generated: conformance-matrix -->``: each runner x each capability, with
  what the conformance kit did there (passed, failed, skipped as not declared), from
  the kit's recorded runs in ``conformance_results.json`` beside this module and the
  capabilities the installed runners declare now. Record a runner's run with
  ``python docs/_ext/hooks.py record NAME...`` (the kit through `check_runner`).

An unknown marker fails the build.
"""

from __future__ import annotations

import enum
import json
import re
import sys
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "cli_reference",
    "conformance_matrix",
    "merge_conformance",
    "on_page_markdown",
    "record_conformance",
    "render",
    "settings_table",
]

RESULTS = Path(__file__).with_name("conformance_results.json")
RUNNER_ORDER = ("thread", "process", "sync", "dask", "ray")

MARKER = re.compile(r"^<!-- generated: (?P<name>[\w-]+) -->$", re.MULTILINE)


# -- settings ---------------------------------------------------------------------------


def _type_text(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return "one of " + ", ".join(f"`{value}`" for value in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        kinds = [a for a in typing.get_args(annotation) if a is not type(None)]
        return " or ".join(_type_text(a) for a in kinds)
    names = {str: "text", int: "whole number", float: "number", bool: "boolean"}
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _constraints(metadata: list[Any]) -> str:
    words = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<"}
    found = []
    for item in metadata:
        for attr, symbol in words.items():
            value = getattr(item, attr, None)
            if value is not None:
                found.append(f"{symbol} {value}")
    return f" ({', '.join(found)})" if found else ""


def _default_text(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "`1`" if value else "`0`"
    if isinstance(value, enum.Enum):
        value = value.value
    return f"`{value}`"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def settings_table() -> str:
    """A Markdown table of every setting, one row per field of the settings model."""
    from baton._settings import Settings

    prefix = str(Settings.model_config.get("env_prefix", ""))
    rows = [
        "| Variable | Type | Default | Meaning |",
        "| --- | --- | --- | --- |",
    ]
    for name, field in Settings.model_fields.items():
        if field.alias or field.validation_alias:
            raise ValueError(
                f"Settings.{name} has an alias; the table names variables as prefix + field "
                "name, so teach settings_table() about aliases first."
            )
        if not field.description:
            raise ValueError(f"Settings.{name} has no description; give it one for the docs.")
        variable = f"{prefix}{name}".upper()
        kind = _type_text(field.annotation) + _constraints(field.metadata)
        rows.append(
            f"| `{variable}` | {_cell(kind)} | {_default_text(field.default)} "
            f"| {_cell(field.description)} |"
        )
    return "\n".join(rows)


# -- the baton command ------------------------------------------------------------------


def cli_reference() -> str:
    """The help of ``baton`` and of each subcommand, as sections with text blocks."""
    import click
    from baton._cli import main

    width = 88
    settings = {"terminal_width": width, "max_content_width": width, **main.context_settings}
    root = click.Context(main, info_name="baton", **settings)
    parts = ["### `baton`", "", "```text", main.get_help(root), "```"]
    for name in main.list_commands(root):
        command = main.get_command(root, name)
        if command is None or command.hidden:
            continue
        context = click.Context(
            command, info_name=name, parent=root, terminal_width=width, max_content_width=width
        )
        parts += ["", f"### `baton {name}`", "", "```text", command.get_help(context), "```"]
    return "\n".join(parts)


# -- the conformance matrix -------------------------------------------------------------


def _entry(runner: dict[str, Any], outcomes: dict[str, str], version: str, level: int) -> Any:
    return {
        "class": runner.get("class", "?"),
        "capabilities": sorted(runner.get("capabilities", ())),
        "kit_version": version,
        "level": level,
        "outcomes": dict(sorted(outcomes.items())),
    }


def _save(results: Path, name: str, entry: Any) -> None:
    recorded: dict[str, Any] = json.loads(results.read_text()) if results.exists() else {}
    recorded[name] = entry
    results.write_text(json.dumps(dict(sorted(recorded.items())), indent=2) + "\n")


def record_conformance(names: Sequence[str], results: Path = RESULTS) -> None:
    """Run the conformance kit against each named runner and record, per runner, the
    capabilities it declared and each test's outcome, merged into `results`."""
    from baton.testing import check_runner

    for name in names:
        # The built-in runners take capacities, for the kit's tests of resources.
        resources = {"slot": 1} if name in ("thread", "process", "sync") else None
        report = check_runner(name, pytest_args=["-q", "-p", "no:randomly"], resources=resources)
        if report.errors or not report.outcomes:
            raise RuntimeError(f"the kit did not run on {name!r}:\n{report.output[-3000:]}")
        runner = {"class": report.runner_class, "capabilities": report.capabilities}
        _save(results, name, _entry(runner, report.outcomes, report.kit_version, report.level))


def merge_conformance(name: str, outcome: Path, results: Path = RESULTS) -> bool:
    """Record runner `name` from the outcome file of a pytest run of the kit (written with
    ``-p baton.testing._report --baton-conformance-report=PATH``, as the dask and ray
    environments of tox do). A run that did not cover every test of the kit at its
    latest level is not recorded (returns False)."""
    import baton
    from baton.testing import LATEST_LEVEL
    from baton.testing._kit import conformance_tests

    if not outcome.exists():
        print(f"{outcome} does not exist: nothing recorded for {name!r}")
        return False
    document = json.loads(outcome.read_text())
    runner = document.get("runner") or {}
    tests = set(conformance_tests())
    outcomes = {
        test: str(entry["outcome"])
        for test, entry in document.get("tests", {}).items()
        if test in tests and entry.get("outcome")
    }
    missing = tests - set(outcomes)
    if runner.get("name") != name or runner.get("level") != LATEST_LEVEL or missing:
        print(
            f"not recorded: the run in {outcome} was not the whole kit at level "
            f"{LATEST_LEVEL} on {name!r} (runner {runner.get('name')!r}, level "
            f"{runner.get('level')!r}, {len(missing)} tests of the kit missing)"
        )
        return False
    _save(results, name, _entry(runner, outcomes, baton.__version__, LATEST_LEVEL))
    return True


def _declared() -> dict[str, set[str] | None]:
    """Installed runners of Baton's own distributions -> declared capabilities (None
    when the runner does not load here)."""
    import baton

    found: dict[str, set[str] | None] = {}
    for info in baton.list_runners():
        if not info.distribution.startswith("baton-"):
            continue
        try:
            found[info.name] = {c.value for c in info.load().capabilities}
        except Exception:
            found[info.name] = None
    return found


def _matrix_cell(outcomes: list[str], declared: bool, recorded: bool) -> str:
    if not declared:
        return f"not declared ({len(outcomes)} skipped)" if recorded else "not declared"
    if not recorded:
        return "declared, not recorded"
    failed = sum(o in ("failed", "error") for o in outcomes)
    skipped = sum(o == "skipped" for o in outcomes)
    passed = sum(o == "passed" for o in outcomes)
    known = sum(o in ("xfailed", "xpassed") for o in outcomes)
    if failed:
        return f"✗ {failed} of {len(outcomes)} failed"
    text = f"✓ {passed} of {len(outcomes)} passed"
    if skipped:
        text += f", {skipped} skipped"
    if known:
        text += f", {known} known failures"
    return text


def conformance_matrix(results: Path = RESULTS) -> str:
    """Each runner x each capability: the conformance kit's outcome for the tests of that
    capability (a first row for the tests every runner must pass)."""
    from baton import Capability
    from baton.testing._kit import conformance_tests

    tests = conformance_tests()
    recorded: dict[str, Any] = json.loads(results.read_text()) if results.exists() else {}
    declared = _declared()
    names = [n for n in RUNNER_ORDER if n in declared or n in recorded]
    names += sorted((set(declared) | set(recorded)) - set(names))
    stale = []
    for name in names:
        entry = recorded.get(name)
        if entry is None:
            continue
        now = declared.get(name)
        if (now is not None and set(entry["capabilities"]) != now) or set(entry["outcomes"]) != set(
            tests
        ):
            stale.append(name)
    if stale:
        raise ValueError(
            f"The recorded conformance runs of {', '.join(stale)} are out of date (the kit's "
            "tests or the runner's capabilities changed since): run "
            f"`python docs/_ext/hooks.py record {' '.join(stale)}` and commit "
            f"{results.name}."
        )
    rows = [("every runner", None), *((c.value, c) for c in Capability)]
    lines = [
        "| capability | " + " | ".join(f"`{n}`" for n in names) + " |",
        "| --- |" + " --- |" * len(names),
    ]
    for label, capability in rows:
        selected = [
            t
            for t, spec in tests.items()
            if (capability in spec.requires if capability else not spec.requires)
        ]
        cells = []
        for name in names:
            entry = recorded.get(name)
            caps = set(entry["capabilities"]) if entry else (declared.get(name) or set())
            outcomes = [entry["outcomes"][t] for t in selected] if entry else selected
            is_declared = capability is None or capability.value in caps
            if entry is None and declared.get(name) is None:
                cells.append("does not load here")
            else:
                cells.append(_matrix_cell(outcomes, is_declared, entry is not None))
        shown = label if capability is None else f"`{label}`"
        count = f"{len(selected)} test{'s' if len(selected) != 1 else ''}"
        lines.append(f"| {shown} ({count}) | " + " | ".join(cells) + " |")
    versions = sorted(
        {f"baton-core {e['kit_version']}, level {e['level']}" for e in recorded.values()}
    )
    footer = f"Recorded with the kit of {'; '.join(versions)}." if versions else "Nothing recorded."
    return "\n".join(lines) + "\n\n" + footer


GENERATORS: dict[str, Callable[[], str]] = {
    "settings-table": settings_table,
    "cli-reference": cli_reference,
    "conformance-matrix": conformance_matrix,
}


def render(markdown: str) -> str:
    """Replace every generated-content marker in `markdown`."""

    def replace(match: re.Match[str]) -> str:
        name = match["name"]
        generator = GENERATORS.get(name)
        if generator is None:
            known = ", ".join(sorted(GENERATORS))
            raise ValueError(f"Unknown marker 'generated: {name}' (known: {known}).")
        return generator()

    return MARKER.sub(replace, markdown)


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    return render(markdown)


if __name__ == "__main__":
    usage = (
        "usage: python docs/_ext/hooks.py record RUNNER...\n"
        "       python docs/_ext/hooks.py merge RUNNER OUTCOME_JSON"
    )
    if len(sys.argv) >= 3 and sys.argv[1] == "record":
        record_conformance(sys.argv[2:])
    elif len(sys.argv) == 4 and sys.argv[1] == "merge":
        merge_conformance(sys.argv[2], Path(sys.argv[3]))
    else:
        sys.exit(usage)
    print(conformance_matrix())
