"""The hook implementations Baton finds through this distribution's entry point."""

from __future__ import annotations

from baton import hookimpl
from baton.hookspecs import RegisterRunner

__all__ = ["register_runners"]


@hookimpl
def register_runners(register: RegisterRunner) -> None:
    # A lazy reference: runner.py is imported only when "pool" is selected.
    register("pool", "baton_pool.runner:PoolRunner")
