"""MkDocs hooks: pages whose content is generated from the code, so it cannot drift.

A page asks for generated content with a marker line:

- ``<!-- generated: settings-table -->``: every field of `baton._settings.Settings`,
  with its ``BATON_`` variable, type, default and description.
- ``<!-- generated: cli-reference -->``: the help of the ``baton`` command and of
  each of its subcommands, as click prints it.

An unknown marker fails the build.
"""

from __future__ import annotations

import enum
import re
import types
import typing
from collections.abc import Callable
from typing import Any

__all__ = ["cli_reference", "on_page_markdown", "render", "settings_table"]

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


GENERATORS: dict[str, Callable[[], str]] = {
    "settings-table": settings_table,
    "cli-reference": cli_reference,
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
