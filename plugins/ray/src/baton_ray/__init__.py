"""The Ray task runner for Baton.

Select it by name, ``@flow(task_runner="ray")`` (a local Ray is started for the flow
run unless this process is already connected to one), or by the address of a running
cluster, ``@flow(task_runner="ray://head:10001")``; build one with options with
``get_runner("ray", address="auto")`` or `RayTaskRunner`. `remote_options` sets the
Ray resources (CPUs, GPUs, memory, custom resources, runtime environment) of the runs
submitted inside it.

The package imports Ray only when one of these names is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from baton_ray._options import remote_options
    from baton_ray._runner import RayTaskRunner

__all__ = ["RayTaskRunner", "remote_options"]

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "RayTaskRunner":
        from baton_ray._runner import RayTaskRunner

        return RayTaskRunner
    if name == "remote_options":
        from baton_ray._options import remote_options

        return remote_options
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
