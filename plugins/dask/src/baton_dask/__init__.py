"""The Dask task runner for Baton.

Select it by name, ``@flow(task_runner="dask")``, or by the address of a running
scheduler, ``@flow(task_runner="dask://127.0.0.1:8786")``; build one with options
with ``get_runner("dask", ...)`` or `DaskTaskRunner`. Inside tasks,
`get_dask_client` gives the cluster's client for Dask collections, and
`dask_options` sets Dask resources and priorities for the runs submitted in it.

The package imports Dask only when one of these names is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from baton_dask._options import dask_options
    from baton_dask._runner import DaskTaskRunner, get_dask_client

__all__ = ["DaskTaskRunner", "dask_options", "get_dask_client"]

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "DaskTaskRunner" or name == "get_dask_client":
        from baton_dask import _runner

        return getattr(_runner, name)
    if name == "dask_options":
        from baton_dask._options import dask_options

        return dask_options
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
