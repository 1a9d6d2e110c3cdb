"""The hook implementation Baton finds through this distribution's entry point."""

from __future__ import annotations

from baton import hookimpl
from baton.hookspecs import RegisterRunner

__all__ = ["register_runners"]


@hookimpl
def register_runners(register: RegisterRunner) -> None:
    # A lazy reference: Dask is imported only when the runner is selected.
    register("dask", "baton_dask._runner:DaskTaskRunner", url_schemes=("dask", "dask+tls"))
