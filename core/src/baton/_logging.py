"""The built-in observer that writes flow and task run lines to the `baton` logger."""

from __future__ import annotations

import atexit
import itertools
import logging
import sys
import threading
from queue import SimpleQueue
from typing import TYPE_CHECKING, Any

from baton.hookspecs import hookimpl

if TYPE_CHECKING:
    from baton._flow import FlowRun
    from baton._states import State
    from baton._taskrun import TaskRun

__all__ = ["configure", "flow_run_finished", "flow_run_started", "task_run_state_changed"]

logger = logging.getLogger("baton")
_handler: logging.Handler | None = None


def configure(level: str) -> None:
    """Apply the log level; give the `baton` logger a console handler if nothing else
    in the process handles log records (as in a plain script)."""
    global _handler
    logger.setLevel(level)
    if _handler is None and not logger.handlers and not logging.getLogger().handlers:
        _handler = logging.StreamHandler(sys.stderr)
        _handler.setFormatter(_ConsoleFormatter())
        logger.addHandler(_handler)
        logger.propagate = False


class _ConsoleFormatter(logging.Formatter):
    """`HH:MM:SS.mmm | LEVEL   | message`, with the clock text made once per second."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s.%(msecs)03d | %(levelname)-7s | %(message)s", "%H:%M:%S")
        self._second = -1
        self._text = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = int(record.created)
        if second != self._second:
            self._text = super().formatTime(record, datefmt)
            self._second = second
        return self._text


class _Pump:
    """Writes task run lines from one thread.

    Worker threads only enqueue; a single thread makes the log records. Many
    workers logging at once would otherwise queue on the handler's lock, and that
    convoy, not the formatting, is what makes per-task lines expensive.
    """

    def __init__(self) -> None:
        self._queue: SimpleQueue[tuple[int, str, tuple[Any, ...]] | threading.Event] = SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def put(self, level: int, message: str, args: tuple[Any, ...]) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    thread = threading.Thread(target=self._serve, name="baton-log", daemon=True)
                    thread.start()
                    self._thread = thread
        self._queue.put((level, message, args))

    def _serve(self) -> None:
        while True:
            item = self._queue.get()
            if isinstance(item, threading.Event):
                item.set()
                continue
            level, message, args = item
            if not logger.isEnabledFor(level):
                continue
            try:
                # makeRecord + handle skips logging's caller lookup (a stack walk per line)
                logger.handle(logger.makeRecord(logger.name, level, "", 0, message, args, None))
            except Exception:  # a broken handler must not stop the pump
                pass

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until every line enqueued so far has been logged."""
        if self._thread is None or threading.current_thread() is self._thread:
            return
        done = threading.Event()
        self._queue.put(done)
        done.wait(timeout)


_pump = _Pump()
atexit.register(_pump.flush)


def flush() -> None:
    _pump.flush()


def enabled() -> bool:
    return logger.isEnabledFor(logging.INFO)


# Completed task runs logged so far, per run scope, and the limit for each scope.
_counts: dict[int, itertools.count[int]] = {}
_limits: dict[int, int | None] = {}


@hookimpl
def flow_run_started(flow_run: FlowRun) -> None:
    from baton._settings import get_settings

    key = id(flow_run.scope)
    _limits[key] = get_settings().task_run_log_limit
    _counts[key] = itertools.count()
    logger.info(
        "Flow run %r - Beginning flow run %r for flow %r",
        flow_run.name,
        flow_run.name,
        flow_run.flow.name,
    )


@hookimpl
def flow_run_finished(flow_run: FlowRun, state: State) -> None:
    _pump.flush()
    key = id(flow_run.scope)
    counter = _counts.pop(key, None)
    limit = _limits.pop(key, None)
    if counter is not None and limit is not None:
        unlogged = next(counter) - limit
        if unlogged > 0:
            logger.info(
                "Flow run %r - %d more task runs completed (only the first %d were logged "
                "one by one; set BATON_TASK_RUN_LOG_LIMIT to change that)",
                flow_run.name,
                unlogged,
                limit,
            )
    level = logging.INFO if state.is_completed() else logging.ERROR
    logger.log(level, "Flow run %r - Finished in state %r", flow_run.name, state)


@hookimpl
def task_run_state_changed(task_run: TaskRun, state: State) -> None:
    if state.is_completed():
        key = id(task_run.scope)
        counter = _counts.get(key)
        if counter is not None:
            limit = _limits.get(key)
            if limit is not None and next(counter) >= limit:
                return
        _pump.put(logging.INFO, "Task run %r - Finished in state %r", (task_run.name, state))
    elif state.is_final():
        level = logging.ERROR
        _pump.put(level, "Task run %r - Finished in state %r", (task_run.name, state))
    elif state.name == "Retrying":
        _pump.put(
            logging.WARNING, "Task run %r - %s: %s", (task_run.name, state.name, state.message)
        )
