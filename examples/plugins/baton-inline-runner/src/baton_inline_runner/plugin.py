"""The hook implementations Baton finds through this distribution's entry point."""

from __future__ import annotations

from baton import hookimpl
from baton.hookspecs import RegisterRunner

__all__ = ["register_runners"]


@hookimpl
def register_runners(register: RegisterRunner) -> None:
    # A lazy reference: runner.py is imported only when "inline" is selected.
    register("inline", "baton_inline_runner.runner:InlineRunner", url_schemes=("inline",))
