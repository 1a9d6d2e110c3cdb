"""Public names report the public module they are exported from."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["report_public_module"]


def report_public_module(namespace: Mapping[str, Any], names: Iterable[str], module: str) -> None:
    """Set `__module__` of each of `names` still defined in a private ``baton._`` module to
    `module`, so that reprs and the docs show `baton.Future`, `baton.runners.RunCall`."""
    for name in names:
        obj = namespace[name]
        if getattr(obj, "__module__", "").startswith("baton._"):
            try:
                obj.__module__ = module
            except (AttributeError, TypeError):
                pass
