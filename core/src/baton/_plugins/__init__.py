"""Plugins: discovery of the ``baton.plugins`` entry points and the runner registry
(`_discovery`), choosing a runner by name, URL or instance (`_selection`), and the
observer hooks' per-task caller (`_observers`)."""

from baton._plugins._discovery import (
    BatonPluginWarning,
    PluginInfo,
    RunnerInfo,
    list_conflicts,
    list_plugins,
    list_runners,
    plugin_manager,
    registry,
    reset,
)
from baton._plugins._observers import make_observer
from baton._plugins._selection import (
    check_task_runner,
    create_runner,
    get_runner,
    lookup_runner,
    resolve_task_runner,
)

__all__ = [
    "BatonPluginWarning",
    "PluginInfo",
    "RunnerInfo",
    "check_task_runner",
    "create_runner",
    "get_runner",
    "list_conflicts",
    "list_plugins",
    "list_runners",
    "lookup_runner",
    "make_observer",
    "plugin_manager",
    "registry",
    "reset",
    "resolve_task_runner",
]
