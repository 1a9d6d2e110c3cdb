"""The hooks a Baton plugin can implement.

A plugin is a module (or any object) whose functions are marked
``@baton.hookimpl`` and named after the specifications below. A distribution
publishes it through the ``baton.plugins`` entry-point group::

    # pyproject.toml of the distribution "baton-inline-runner"
    [project.entry-points."baton.plugins"]
    inline = "baton_inline_runner.plugin"

and Baton finds it when the first runner is looked up, with no import in the
user's code. The built-in runners and observers are registered exactly this
way, through the entry points of ``baton-core``.

A plugin implements any subset of the hooks; a function marked ``@hookimpl``
whose name is not a hook below is a load error (a typo would otherwise be
silently never called), and so is one whose parameters are not among the
hook's. A hook implementation may take fewer parameters than the hook offers.

Loading is guarded, entry point by entry point:

- A plugin that raises on import, or whose ``register_runners`` raises, is
  skipped with a ``baton.BatonPluginWarning``; every other runner keeps
  working, and ``baton plugins`` shows the error with its traceback.
  ``BATON_STRICT_PLUGINS=1`` turns that into a ``baton.PluginLoadError`` (for CI).
- ``BATON_LOAD_PLUGINS`` is an allow-list of distribution names: unset, every
  installed plugin loads; empty, none but the built-ins of ``baton-core``;
  ``baton-dask,my-plugin``, only those. Installing a plugin means running its
  code when Baton starts looking up runners; the allow-list is how to refuse that.
- Two plugins registering the same runner name (or URL scheme) is an error that
  names both: selecting that name raises it, ``baton runners`` shows it, and with
  ``BATON_STRICT_PLUGINS=1`` loading raises it.
- A plugin registering a built-in runner's name (``thread``, ``process``,
  ``sync``) does not take it: the built-in keeps the name and the plugin's runner
  is ignored, with a ``baton.BatonPluginWarning`` naming both (a
  ``baton.PluginLoadError`` with ``BATON_STRICT_PLUGINS=1``).
- A name in ``BATON_LOAD_PLUGINS`` that matches no installed distribution is
  reported the same way, with the installed plugins listed.

Observer hooks cost nothing per task when no plugin implements them: they are
looked up once per flow run, and the per-task call is skipped entirely when
nobody listens. A plugin that listens only sometimes (the built-in progress bar
listens on a terminal only) defines a module-level function
``observes_task_runs() -> bool``; when it returns False as a flow run starts,
that plugin's `task_run_state_changed` is left out of the flow run's per-task
caller, so it costs nothing either.
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
"""Marks a function of a plugin as the implementation of the hook of the same name.

>>> from baton import hookimpl
>>> @hookimpl
... def flow_run_started(flow_run):
...     print("starting", flow_run.name)
"""


class RegisterRunner(Protocol):
    """The callback `register_runners` receives."""

    def __call__(
        self,
        name: str,
        runner: type[TaskRunner] | str,
        *,
        url_schemes: Sequence[str] = (),
    ) -> None:
        """Register `runner` under `name`, the name users select it by.

        `runner` is a `baton.TaskRunner` subclass, or a lazy
        ``"package.module:ClassName"`` reference that is imported only when the
        runner is selected (or listed with its capabilities by ``baton runners``),
        so that a heavy engine such as Dask or Ray costs nothing until it is used.

        `url_schemes` are the URL schemes the runner accepts, without ``://``:
        with ``url_schemes=("dask",)``, ``task_runner="dask://127.0.0.1:8786"``
        selects this runner and builds it with its class's ``from_url(url)``.
        For a class passed directly, its ``url_schemes`` class attribute is the
        default; a lazy reference must list them here, since the class is not
        imported at registration.

        Raises `TypeError` for a malformed name or reference, or a name this
        plugin already registered; that fails the plugin's load like any other
        error.
        """


@hookspec
def register_runners(register: RegisterRunner) -> None:
    """Register the task runners this plugin provides.

    Called once per process (per allow-list and strictness setting), when the
    first runner is looked up by name, separately for each plugin: one whose
    implementation raises registers nothing, is reported, and leaves the others'
    runners working. Call `register` once per runner::

        from baton import hookimpl

        @hookimpl
        def register_runners(register):
            register("dask", "baton_dask.runner:DaskTaskRunner", url_schemes=("dask",))

    Nothing else should happen here: no engine imports, no connections. The
    built-in ``thread`` and ``sync`` runners are registered through this very
    hook by ``baton-core``'s own entry point.
    """


@hookspec
def flow_run_started(flow_run: FlowRun) -> None:
    """A flow run is about to start its task runner and call its function.

    `flow_run` carries ``id``, ``name``, ``flow`` (with ``flow.name``),
    ``parameters``, ``task_runner`` (the runner instance it uses) and
    ``start_time``. Called once per flow run, in the thread that called the flow
    (the event loop's thread for an async flow), so it may do modest work such
    as opening a file or starting a thread. An exception is logged on the
    ``baton`` logger and does not affect the flow run.

    ::

        import time
        from baton import hookimpl

        started = {}

        @hookimpl
        def flow_run_started(flow_run):
            started[flow_run.id] = time.perf_counter()
    """


@hookspec
def flow_run_finished(flow_run: FlowRun, state: State) -> None:
    """A flow run reached its final `state`, after every task run it submitted ended
    and its task runner shut down.

    Called once per flow run, also when the flow failed or was interrupted, in
    the thread that called the flow, before the flow returns or raises. `state`
    is the final flow run `State` (``state.is_completed()``, ``state.message``,
    ``state.error``); ``flow_run.end_time`` is set. An exception is logged, not
    raised.

    ::

        @hookimpl
        def flow_run_finished(flow_run, state):
            took = time.perf_counter() - started.pop(flow_run.id)
            metrics.timing("flow_run", took, tags={"flow": flow_run.flow.name,
                                                   "state": state.name})
    """


@hookspec
def task_run_state_changed(task_run: TaskRun, state: State) -> None:
    """A task run of a flow run entered `state`: RUNNING, a ``Retrying`` PENDING, or
    its final state (COMPLETED, FAILED, CRASHED or CANCELLED; ``state.name`` tells
    ``TimedOut`` and ``UpstreamFailed`` apart).

    `task_run` carries ``id``, ``name``, ``task`` (with ``task.name``), ``args``,
    ``kwargs`` and ``parameters``; ``worker`` says where it runs (a thread's name,
    ``pid N``, a Dask worker's address...), ``upstream_ids`` the ids of the runs it
    waited for and ``parent_id`` the id of the run that submitted it; for a run of a
    ``.map``, ``map_id`` (the same for every run of that map) and ``map_index`` (None
    for other runs).

    This is the per-task hook: it is called in whichever thread saw the change
    (a worker thread, or the thread that received a remote result), possibly from
    many threads at once, so an implementation must be thread-safe and quick; do
    slow work (I/O, network) on a thread of your own. An exception is logged,
    not raised. Runs submitted outside any flow are not reported.

    When nobody implements it, it costs nothing per task. A plugin that does not
    always need it defines ``observes_task_runs() -> bool`` at module level (see
    the top of this page), asked once per flow run.

    ::

        import collections, threading
        from baton import hookimpl

        counts = collections.Counter()
        lock = threading.Lock()

        @hookimpl
        def task_run_state_changed(task_run, state):
            if state.is_final():
                with lock:
                    counts[task_run.task.name, state.name] += 1
    """
