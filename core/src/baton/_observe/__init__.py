"""The built-in observer that writes a flow run's trace file and HTML report.

``BATON_TRACE_FILE=run.json`` writes each flow run as a Chrome trace (Perfetto and
``chrome://tracing`` open it); ``BATON_REPORT_FILE=run.html`` writes it as one
self-contained HTML page. ``baton run --trace/--report`` set them.

While a flow run goes on, the per-task hook only adds a few plain values per state
change to a list (see `Recorder`); everything else (attempts, tracks, arrows, the
page) is worked out and written once, as the flow run finishes. With neither setting,
`observes_task_runs()` is False and the per-task hook is left out of the flow
run's observer: it costs nothing per task.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from baton._states import StateType
from baton.hookspecs import hookimpl

if TYPE_CHECKING:
    from baton._flow import FlowRun
    from baton._states import State
    from baton._taskrun import TaskRun

__all__ = [
    "flow_run_finished",
    "flow_run_started",
    "observes_task_runs",
    "task_run_state_changed",
]

logger = logging.getLogger("baton")

_RUNNING = StateType.RUNNING
_PENDING = StateType.PENDING
_COMPLETED = StateType.COMPLETED
_COMPLETED_NAME = "Completed"


def _paths() -> tuple[str | None, str | None]:
    from baton._settings import get_settings

    settings = get_settings()
    return settings.trace_file, settings.report_file


def observes_task_runs() -> bool:
    """Whether a flow run starting now is recorded (read once per flow run)."""
    trace, report = _paths()
    return trace is not None or report is not None


class Recorder:
    """What one flow run's task runs went through, as they went through it.

    The common state changes are written into flat lists, a few values each, with
    one `list.extend` of a short-lived tuple: atomic (worker threads need no lock),
    and nothing is kept that the collector would count or walk:

    - `starts`: run id, timestamp, worker, for each RUNNING state;
    - `completed`: run id, timestamp, worker, task, for each COMPLETED state; the
      few runs with more to say have it in `names` (a name from the task's
      `task_run_name`; other runs get the default one at the end), `links` (upstream
      ids and parent id) and `completed_names` (a state named otherwise than
      ``Completed``).

    `ends` holds the other states, one tuple each:

    - PENDING between attempts (``Retrying``): ``(run id, timestamp, worker, state
      name, message, starts before it)``, the last being how many RUNNING states were
      in `starts` then: a run's attempts are told apart by it;
    - a final state other than COMPLETED: ``(run id, timestamp, worker, state name,
      state type, run name, task name, retries allowed, upstream ids, parent id,
      message, traceback text or None)``.

    `retried` turns True with the first PENDING state: until then every run has at
    most one attempt, and the record is built on a shorter path.
    """

    __slots__ = (
        "completed",
        "completed_names",
        "ends",
        "flow_run",
        "links",
        "names",
        "report",
        "retried",
        "starts",
        "trace",
    )

    def __init__(self, flow_run: FlowRun, trace: str | None, report: str | None) -> None:
        self.flow_run = flow_run
        self.trace = trace
        self.report = report
        self.starts: list[Any] = []
        self.completed: list[Any] = []
        self.names: dict[int, str] = {}
        self.links: dict[int, tuple[tuple[int, ...], int | None]] = {}
        self.completed_names: dict[int, str] = {}
        self.ends: list[tuple[Any, ...]] = []
        self.retried = False


def final_event(task_run: TaskRun, state: State) -> tuple[Any, ...]:
    """The event of a run's final state (see `Recorder`)."""
    text = None
    error = state.error
    if error is not None:
        text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    task = task_run.task
    return (
        task_run.id,
        state.timestamp,
        task_run.worker,
        state.name,
        state.type.value,
        task_run.name,
        task.name,
        task.options.retries,
        task_run.upstream_ids,
        task_run.parent_id,
        state.message,
        text,
    )


_lock = threading.Lock()
_recorders: dict[int, Recorder] = {}
# The per-task hook's view of `_recorders`: each recorder with the bound methods that
# add to its lists (`starts.extend`, `completed.extend`, `ends.append`).
_Add = Callable[[tuple[Any, ...]], None]
_appends: dict[int, tuple[_Add, _Add, _Add, Recorder]] = {}


@hookimpl
def flow_run_started(flow_run: FlowRun) -> None:
    trace, report = _paths()
    if trace is None and report is None:
        return
    recorder = Recorder(flow_run, trace, report)
    with _lock:
        _recorders[id(flow_run.scope)] = recorder
        _appends[id(flow_run.scope)] = (
            recorder.starts.extend,
            recorder.completed.extend,
            recorder.ends.append,
            recorder,
        )


@hookimpl
def flow_run_finished(flow_run: FlowRun, state: State) -> None:
    with _lock:
        recorder = _recorders.pop(id(flow_run.scope), None)
        _appends.pop(id(flow_run.scope), None)
    if recorder is None:
        return
    # Tens of thousands of small objects are made at once, and none is garbage: the
    # collector's passes over them would cost more than making them. They are all
    # gone again before it is back on.
    collecting = gc.isenabled()
    gc.disable()
    try:
        _record_and_write(flow_run, state, recorder)
    finally:
        if collecting:
            gc.enable()


def _record_and_write(flow_run: FlowRun, state: State, recorder: Recorder) -> None:
    from baton._observe._model import FlowRecord
    from baton._observe._trace import chrome_trace

    trace, report = recorder.trace, recorder.report
    if report is None and trace is not None:
        from baton._observe._flat import flat_trace

        # A flow run of runs that all completed at once, with nothing linking them,
        # is written without a record of each run.
        _write(
            trace,
            flow_run,
            "trace",
            lambda: (
                flat_trace(flow_run, state, recorder)
                or chrome_trace(FlowRecord.build(flow_run, state, recorder))
            ),
        )
        return
    record = FlowRecord.build(flow_run, state, recorder)
    if trace is not None:
        _write(trace, flow_run, "trace", lambda: chrome_trace(record))
    if report is not None:
        from baton._observe._report import html_report

        _write(report, flow_run, "report", lambda: html_report(record))


@hookimpl
def task_run_state_changed(task_run: TaskRun, state: State) -> None:
    appends = _appends.get(id(task_run.scope))
    if appends is None:
        return
    kind = state.type
    if kind is _RUNNING:
        appends[0]((task_run.id, state.timestamp, task_run.worker))
    elif kind is _COMPLETED:
        task = task_run.task
        run_id = task_run.id
        appends[1]((run_id, state.timestamp, task_run.worker, task))
        if task.options.task_run_name is not None:
            appends[3].names[run_id] = task_run.name
        if task_run.upstream_ids or task_run.parent_id is not None:
            appends[3].links[run_id] = (task_run.upstream_ids, task_run.parent_id)
        if state.name != _COMPLETED_NAME:
            appends[3].completed_names[run_id] = state.name
    elif kind is _PENDING:
        recorder = appends[3]
        recorder.retried = True
        message = state.message or ""
        starts = len(recorder.starts) // 3
        appends[2]((task_run.id, state.timestamp, task_run.worker, state.name, message, starts))
    else:
        appends[2](final_event(task_run, state))


def target_path(template: str, flow_run: FlowRun) -> str:
    """`template` with ``{flow}`` and ``{flow_run}`` replaced by the flow run's names."""
    return template.replace("{flow}", flow_run.flow.name).replace("{flow_run}", flow_run.name)


def _write(template: str, flow_run: FlowRun, what: str, render: Any) -> None:
    path = target_path(template, flow_run)
    try:
        text = render()
        folder = os.path.dirname(path)
        if folder:
            os.makedirs(folder, exist_ok=True)
        temporary = f"{path}.{os.getpid()}.tmp"
        with open(temporary, "w", encoding="utf-8") as file:
            file.write(text)
        os.replace(temporary, path)
    except Exception:
        logger.exception(
            "Flow run %r - could not write its %s to %r; check that the folder is writable",
            flow_run.name,
            what,
            path,
        )
        return
    logger.info("Flow run %r - %s written to %s", flow_run.name, what.capitalize(), path)
