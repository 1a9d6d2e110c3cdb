"""An example Baton runner plugin: the `inline` runner.

The package imports nothing on its own: Baton imports `plugin` to discover the
runner, and `runner` only when the runner is selected. For a runner built on a
heavy engine this keeps ``import baton`` and every other runner fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from baton_inline_runner.runner import InlineRunner

__all__ = ["InlineRunner"]


def __getattr__(name: str) -> Any:
    if name == "InlineRunner":
        from baton_inline_runner.runner import InlineRunner

        return InlineRunner
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
