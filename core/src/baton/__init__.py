"""Baton: run a workflow's steps concurrently on a task runner chosen by name.

>>> from baton import flow, task
>>> @task
... def square(x):
...     return x * x
>>> @flow
... def squares(n):
...     return square.map(range(n)).result()
>>> squares(4)
[0, 1, 4, 9]
"""

from baton._backoff import exponential_backoff
from baton._errors import (
    BatonError,
    CancelledRun,
    CrashedRun,
    FlowRunFailed,
    InvalidOptionsError,
    MappingError,
    PluginLoadError,
    RemoteTaskError,
    RunnerClosedError,
    TaskTimeoutError,
    UnknownRunnerError,
    UpstreamTaskError,
)
from baton._flow import Flow, FlowRun, flow
from baton._futures import DoneAndNotDone, Future, FutureList, as_completed, wait
from baton._limits import LimitError, concurrency, rate_limit, rate_limit_async
from baton._map import LazyMap
from baton._plugins import (
    BatonPluginWarning,
    PluginInfo,
    RunnerInfo,
    get_runner,
    list_plugins,
    list_runners,
)
from baton._public import report_public_module as _report_public_module
from baton._resolve import allow_failure, quote, unmapped
from baton._runner import Capability, TaskRunner
from baton._states import State, StateType
from baton._tags import tags
from baton._task import Task, task
from baton._taskrun import TaskRun, current_task_run
from baton.hookspecs import hookimpl

__version__ = "0.1.0"

__all__ = [
    "BatonError",
    "BatonPluginWarning",
    "CancelledRun",
    "Capability",
    "CrashedRun",
    "DoneAndNotDone",
    "Flow",
    "FlowRun",
    "FlowRunFailed",
    "Future",
    "FutureList",
    "InvalidOptionsError",
    "LazyMap",
    "LimitError",
    "MappingError",
    "PluginInfo",
    "PluginLoadError",
    "RemoteTaskError",
    "RunnerClosedError",
    "RunnerInfo",
    "State",
    "StateType",
    "Task",
    "TaskRun",
    "TaskRunner",
    "TaskTimeoutError",
    "UnknownRunnerError",
    "UpstreamTaskError",
    "__version__",
    "allow_failure",
    "as_completed",
    "concurrency",
    "current_task_run",
    "exponential_backoff",
    "flow",
    "get_runner",
    "hookimpl",
    "list_plugins",
    "list_runners",
    "quote",
    "rate_limit",
    "rate_limit_async",
    "tags",
    "task",
    "unmapped",
    "wait",
]

# Public names report the public module, so reprs and docs show `baton.Future`.
_report_public_module(globals(), __all__, __name__)
