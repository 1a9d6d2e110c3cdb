"""The hooks a Baton plugin can implement.

A plugin is a module (or object) with functions marked `@baton.hookimpl`, named
after the specifications below, and published through the ``baton.plugins``
entry-point group of its distribution::

    [project.entry-points."baton.plugins"]
    my_runner = "my_package.plugin"

Each entry point is loaded in its own guard: a plugin that fails to import is
reported (by a warning and by ``baton plugins``) and every other runner keeps
working. The ``BATON_LOAD_PLUGINS`` setting lists the distributions allowed to
load, and ``BATON_STRICT_PLUGINS=1`` turns a load failure into an error.

Hooks that no plugin implements cost nothing per task: the observer hooks are
looked up once per flow run, and skipped entirely when nobody listens.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import pluggy

if TYPE_CHECKING:
    from collections.abc import Sequence

    from baton._flow import FlowRun
    from baton._runner import TaskRunner
    from baton._states import State
    from baton._taskrun import TaskRun

__all__ = [
    "RegisterRunner",
    "flow_run_finished",
    "flow_run_started",
    "hookimpl",
    "hookspec",
    "register_runners",
    "task_run_state_changed",
]

PROJECT = "baton"

hookspec = pluggy.HookspecMarker(PROJECT)
"""Marks a hook specification (used only in this module)."""

hookimpl = pluggy.HookimplMarker(PROJECT)
"""Marks a function of a plugin as the implementation of the hook of the same name."""


class RegisterRunner(Protocol):
    """The callback `register_runners` receives."""

    def __call__(
        self,
        name: str,
        runner: type[TaskRunner] | str,
        *,
        url_schemes: Sequence[str] = (),
    ) -> None:
        """Register `runner` under `name`.

        `runner` is a `TaskRunner` subclass, or a lazy ``"module:ClassName"``
        reference that is imported only when the runner is selected, so that a
        heavy engine (Dask, Ray) costs nothing until it is used. `url_schemes`
        are the URL schemes the runner accepts (``task_runner="dask://host:8786"``);
        the class's `from_url` builds the runner from such a URL.
        """


@hookspec
def register_runners(register: RegisterRunner) -> None:
    """Register the task runners this plugin provides.

    Called once, when the first runner is looked up by name. Call `register`
    once per runner::

        @baton.hookimpl
        def register_runners(register):
            register("dask", "baton_dask.runner:DaskTaskRunner", url_schemes=("dask",))

    Two plugins registering the same name is an error that names both.
    """


@hookspec
def flow_run_started(flow_run: FlowRun) -> None:
    """A flow run is about to call its function.

    `flow_run` carries `id`, `name`, `flow`, `parameters` and `task_runner`.
    Called in the thread that called the flow. Exceptions are logged, not raised.
    """


@hookspec
def flow_run_finished(flow_run: FlowRun, state: State) -> None:
    """A flow run reached its final `state`, after every task run it submitted ended.

    Called in the thread that called the flow, before the flow returns or raises.
    Exceptions are logged, not raised.
    """


@hookspec
def task_run_state_changed(task_run: TaskRun, state: State) -> None:
    """A task run entered `state`: RUNNING, a `Retrying` PENDING, or its final state.

    Called in whichever thread observed the change (a worker thread, or the thread
    that received a remote result), possibly from many threads at once, so an
    implementation must be thread-safe and quick. Runners that execute work in
    other processes report the final state only. Exceptions are logged, not raised.
    """
