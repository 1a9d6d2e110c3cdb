"""Observer hooks: the per-task `task_run_state_changed` caller of a flow run, built once
as the run starts from the plugins that listen, and nothing at all when none does."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pluggy

    from baton._states import State
    from baton._taskrun import TaskRun

__all__ = ["make_observer"]

logger = logging.getLogger("baton")


def _observes_task_runs(plugin: object) -> bool:
    from baton import _logging

    if plugin is _logging:
        return _logging.enabled()
    check = getattr(plugin, "observes_task_runs", None)
    if check is None:
        return True
    try:
        return bool(check())
    except Exception:
        logger.exception("observes_task_runs() of plugin %r raised; leaving it out", plugin)
        return False


def make_observer(registry_pm: pluggy.PluginManager) -> Callable[[TaskRun, State], None] | None:
    """The per-task observer callable for a flow run, or None when nothing listens.
    Where the core calls it, what it raises is logged and changes nothing.

    A plugin whose ``observes_task_runs()`` returns False as the flow run starts
    (the built-in logging below INFO, the progress bar off a terminal) is left out
    of the caller, so it costs nothing per task.
    """
    impls = registry_pm.hook.task_run_state_changed.get_hookimpls()
    active = [impl for impl in impls if _observes_task_runs(impl.plugin)]
    if not active:
        return None
    if any(impl.hookwrapper or impl.wrapper for impl in active):
        idle = [impl.plugin for impl in impls if impl not in active]
        hook: Any = registry_pm.subset_hook_caller("task_run_state_changed", remove_plugins=idle)

        def observe_all(task_run: TaskRun, state: State) -> None:
            try:
                hook(task_run=task_run, state=state)
            except Exception:
                logger.exception("A task_run_state_changed hook raised for %r", task_run)

        return observe_all
    # Plain implementations are called directly, in pluggy's order (the last registered
    # first): this is the per-task path, and one raising must not silence the others.
    # One alone is the observer itself: where the core calls it, it logs what it raises.
    calls = [_positional(impl.function, impl.argnames) for impl in reversed(active)]
    if len(calls) == 1:
        return calls[0]  # type: ignore[return-value]

    def observe(task_run: TaskRun, state: State) -> None:
        for call in calls:
            try:
                call(task_run, state)
            except Exception:
                logger.exception("A task_run_state_changed hook raised for %r", task_run)

    return observe


def _positional(
    function: Callable[..., object], argnames: Sequence[str]
) -> Callable[[TaskRun, State], object]:
    """`function` called with the hook arguments it asks for (a subset, in any order)."""
    names = tuple(argnames)
    if names == ("task_run", "state"):
        return function
    if names == ("state", "task_run"):
        return lambda task_run, state: function(state, task_run)
    if names == ("task_run",):
        return lambda task_run, state: function(task_run)
    if names == ("state",):
        return lambda task_run, state: function(state)
    return lambda task_run, state: function()
