"""An example Baton runner plugin: the `pool` runner, on a pool of worker processes.

The package imports nothing on its own: Baton imports `plugin` to discover the
runner, and `runner` only when the runner is selected.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from baton_pool.runner import PoolRunner

__all__ = ["PoolRunner"]


def __getattr__(name: str) -> Any:
    if name == "PoolRunner":
        from baton_pool.runner import PoolRunner

        return PoolRunner
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
