"""Griffe extension: give Baton's docstrings fenced code blocks before they render.

Baton's docstrings hold doctest examples (``>>>``) and RST-style literal blocks
(a paragraph ending in ``::`` followed by an indented block). Markdown reads the
first as nested block quotes and leaves the ``::`` in the text, so both are turned
into fenced blocks here: doctests into ``pycon``, literal blocks into ``python``
(or ``toml`` when the block is a TOML table).
"""

from __future__ import annotations

from typing import Any

import griffe

__all__ = ["FencedDocstrings", "fence_docstring"]


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _fence(lines: list[str], language: str, dedent: int, indent: int) -> list[str]:
    pad = " " * indent
    body = [line[dedent:] if line.strip() else "" for line in lines]
    while body and not body[-1]:
        body.pop()
    return [f"{pad}```{language}", *(f"{pad}{line}" if line else "" for line in body), f"{pad}```"]


def _literal_language(lines: list[str]) -> str:
    for line in lines:
        text = line.strip()
        if text and not text.startswith("#"):
            return "toml" if text.startswith("[") else "python"
    return "text"


def fence_docstring(text: str) -> str:
    """Return `text` with doctest and ``::`` literal blocks turned into fenced blocks."""
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    in_fence = False
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if stripped.startswith("```"):
            in_fence = not in_fence
            out.append(line)
            i += 1
            continue
        if in_fence:
            out.append(line)
            i += 1
            continue
        if stripped.startswith(">>>"):
            indent = _indent(line)
            block = []
            while i < len(lines) and lines[i].strip():
                block.append(lines[i])
                i += 1
            if out and out[-1].strip():
                out.append("")
            out.extend(_fence(block, "pycon", indent, indent))
            continue
        if stripped.endswith("::"):
            base = _indent(line)
            j = i + 1
            while j < len(lines) and not lines[j].strip():
                j += 1
            if j < len(lines) and _indent(lines[j]) > base:
                block_indent = _indent(lines[j])
                block = []
                while j < len(lines) and (
                    not lines[j].strip() or _indent(lines[j]) >= block_indent
                ):
                    block.append(lines[j])
                    j += 1
                head = line.rstrip()[:-2].rstrip()
                if head.strip():
                    out.append(head + ":")
                if out and out[-1].strip():
                    out.append("")
                out.extend(_fence(block, _literal_language(block), block_indent, base))
                if j < len(lines) and lines[j].strip():
                    out.append("")
                i = j
                continue
        out.append(line)
        i += 1
    while out and not out[-1].strip():
        out.pop()
    return "\n".join(out)


class FencedDocstrings(griffe.Extension):
    """Rewrites each docstring as it is loaded (see `fence_docstring`)."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = fence_docstring(obj.docstring.value)
