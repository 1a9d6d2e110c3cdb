"""The hook implementation Baton finds through this distribution's entry point."""

from __future__ import annotations

from baton import hookimpl
from baton.hookspecs import RegisterRunner

__all__ = ["register_runners"]


@hookimpl
def register_runners(register: RegisterRunner) -> None:
    # A lazy reference: Ray is imported only when the runner is selected.
    register("ray", "baton_ray._runner:RayTaskRunner", url_schemes=("ray",))
