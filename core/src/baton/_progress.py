"""The built-in progress bar: on stderr, redrawn in place while a flow run's task runs
go on.

Its first line counts the flow run's task runs. On a terminal, one line follows per
`.map` (its runs counted together) and per task whose runs were `.submit`-ted (or
called directly), each with its runs done, failed, running and pending. Written to
a file or a pipe it is the first line only, without terminal control sequences.

It shows when stderr is a terminal, or when ``BATON_PROGRESS=1`` asks for it, and
never otherwise (``BATON_PROGRESS=0`` turns it off everywhere). A flow run gets a bar
only once it has taken longer than half a second, so short flows never flicker.

Log lines and the bar share stderr without mangling each other: while the bar is
shown, the log handlers that write to that same stream write through it, and it
clears its line before each log line and draws itself again after.

When the bar is off, `observes_task_runs()` says so and the per-task hook is left
out of the flow run's observer: it costs nothing per task.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, TextIO

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

DELAY = 0.5
"""Seconds a flow run runs before its bar appears."""
INTERVAL = 0.1
"""Seconds between redraws on a terminal."""
FILE_INTERVAL = 1.0
"""Seconds between redraws off a terminal (each one stays in the output)."""
MIN_COLUMNS = 10
"""A reported terminal width below this is taken as unknown..."""
FALLBACK_COLUMNS = 80
"""...and this width is used instead."""
_BAR_WIDTH = 24


def observes_task_runs() -> bool:
    """Whether a flow run starting now gets a bar (read once per flow run)."""
    from baton._settings import get_settings

    wanted = get_settings().progress
    if wanted is not None:
        return wanted
    return _is_terminal(sys.stderr)


def _is_terminal(stream: TextIO | None) -> bool:
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, ValueError):  # a closed or unusual replacement stream
        return False


MAX_GROUPS = 8
"""Lines of maps and tasks shown at most under a flow run's line; the rest are summed
up in one more."""


class _Group:
    """The runs of one `.map`, or the runs of one task that were submitted."""

    __slots__ = ("done", "failed", "label", "running", "submitted")

    def __init__(self, label: str) -> None:
        self.label = label
        self.submitted = 0
        self.done = 0
        self.failed = 0
        self.running: set[int] = set()  # ids of the runs running now

    def counts(self) -> tuple[int, int, int, int]:
        """(done, failed, running, pending)."""
        running = len(self.running)
        pending = max(0, self.submitted - self.done - self.failed - running)
        return self.done, self.failed, running, pending

    def line(self) -> str:
        done, failed, running, pending = self.counts()
        return (
            f"  {self.label}: {done:,} done, {failed:,} failed, {running:,} running, "
            f"{pending:,} pending"
        )


class _Tracker:
    """The counts of one flow run, in all and by map or task."""

    __slots__ = ("failed", "finished", "flow_run", "groups", "lock", "started")

    def __init__(self, flow_run: FlowRun) -> None:
        self.flow_run = flow_run
        self.lock = threading.Lock()
        self.finished = 0
        self.failed = 0
        self.started = time.monotonic()
        self.groups: dict[tuple[str, object], _Group] = {}

    def _group(self, run: TaskRun) -> _Group:
        """The group of `run` (the caller holds the lock)."""
        map_id = run.map_id
        key: tuple[str, object] = ("task", run.task.name) if map_id is None else ("map", map_id)
        group = self.groups.get(key)
        if group is None:
            if map_id is None:
                label = run.task.name
            else:
                label = f"{run.task.name}.map"
                earlier = sum(
                    1 for k, g in self.groups.items() if k[0] == "map" and g.label.startswith(label)
                )
                if earlier:
                    label += f" #{earlier + 1}"
            group = self.groups[key] = _Group(label)
        return group

    def submitted(self, run: TaskRun) -> None:
        with self.lock:
            self._group(run).submitted += 1

    def changed(self, run: TaskRun, state: State) -> None:
        with self.lock:
            group = self._group(run)
            if state.type is StateType.RUNNING:
                if not run.future.done():  # a late report of a run that already ended
                    group.running.add(run.id)
                return
            group.running.discard(run.id)
            if state.is_final():
                self.finished += 1
                if state.type is StateType.COMPLETED:
                    group.done += 1
                else:
                    self.failed += 1
                    group.failed += 1

    def task_finished(self, failed: bool) -> None:
        with self.lock:
            self.finished += 1
            if failed:
                self.failed += 1

    def lines(self, now: float) -> list[str] | None:
        """The flow run's line and one per map or task, or None while there is nothing
        worth showing. Groups with runs to go come first."""
        head = self.line(now)
        if head is None:
            return None
        with self.lock:
            groups = list(self.groups.values())
            going = [g for g in groups if g.running or g.submitted > g.done + g.failed]
            ended = [g for g in groups if g not in going]
            ordered = going + ended
            shown = ordered if len(ordered) <= MAX_GROUPS else ordered[: MAX_GROUPS - 1]
            lines = [head, *(group.line() for group in shown)]
            rest = ordered[len(shown) :]
            if rest:
                counts = [g.counts() for g in rest]
                done, failed, running, pending = (sum(c[i] for c in counts) for i in range(4))
                lines.append(
                    f"  {len(rest)} more: {done:,} done, {failed:,} failed, {running:,} running, "
                    f"{pending:,} pending"
                )
        return lines

    def line(self, now: float) -> str | None:
        """The bar's text, or None while there is nothing worth showing."""
        elapsed = now - self.started
        if elapsed < DELAY:
            return None
        with self.lock:
            finished, failed = self.finished, self.failed
        total = finished + self.flow_run.scope.pending_count()
        if total == 0:
            return None
        filled = _BAR_WIDTH * finished // total
        bar = "#" * filled + "-" * (_BAR_WIDTH - filled)
        text = (
            f"{self.flow_run.name}: [{bar}] {finished:,}/{total:,} task runs "
            f"{100 * finished // total}% {_duration(elapsed)}"
        )
        if 0 < finished < total:
            text += f" eta {_duration(elapsed * (total - finished) / finished)}"
        if failed:
            text += f", {failed:,} failed"
        return text


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class _Bar:
    """The one bar line of the process; shows the newest flow run that has one."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.terminal = _is_terminal(stream)
        self.lock = threading.RLock()
        self.trackers: dict[int, _Tracker] = {}
        self.shown = 0  # width of the (last) line on screen now
        self.rows = 0  # lines on screen now, the cursor on the last one
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._rerouted: list[logging.StreamHandler[Any]] = []
        self._through = _ThroughBar(self)

    # -- flow runs come and go ------------------------------------------------------

    def add(self, key: int, tracker: _Tracker) -> None:
        with self.lock:
            self.trackers[key] = tracker
            if self._thread is None:
                self._reroute_logging()
                self._stop = threading.Event()
                self._thread = threading.Thread(
                    target=self._tick, args=(self._stop,), name="baton-progress", daemon=True
                )
                self._thread.start()

    def remove(self, key: int) -> bool:
        """Drop a flow run's bar; True when no flow run is left (the bar is gone)."""
        with self.lock:
            self.trackers.pop(key, None)
            if self.trackers:
                self.draw()
                return False
            self._stop.set()
            thread, self._thread = self._thread, None
            self._clear()
            self._restore_logging()
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        return True

    @property
    def columns(self) -> int:
        """The terminal's width; 80 when it reports none (0) or an unusable one."""
        try:
            columns = os.get_terminal_size(self.stream.fileno()).columns
        except (AttributeError, ValueError, OSError):
            columns = shutil.get_terminal_size().columns
        # Serial consoles and some CI log viewers report 0 columns.
        return columns if columns >= MIN_COLUMNS else FALLBACK_COLUMNS

    def _tick(self, stop: threading.Event) -> None:
        interval = INTERVAL if _is_terminal(self.stream) else FILE_INTERVAL
        while not stop.wait(interval):
            try:
                self.draw()
            except Exception:  # a closed stream must not kill the thread noisily
                return

    # -- drawing --------------------------------------------------------------------

    def draw(self) -> None:
        with self.lock:
            lines = None
            now = time.monotonic()
            for tracker in reversed(self.trackers.values()):
                if self.terminal:
                    lines = tracker.lines(now)
                else:
                    line = tracker.line(now)
                    lines = None if line is None else [line]
                if lines is not None:
                    break
            if lines is None:
                self._clear()
                return
            width = max(20, self.columns - 1)
            lines = [line[:width] for line in lines]
            if len(lines) == 1 and self.rows <= 1:
                # One line: overwritten in place, which any stream understands.
                text = lines[0]
                self.stream.write("\r" + text + " " * max(0, self.shown - len(text)))
            else:
                # Several, on a terminal: back to the first line, each line rewritten and
                # erased to its end, and what is left below erased.
                up = f"\x1b[{self.rows - 1}A" if self.rows > 1 else ""
                below = "\x1b[J" if self.rows > len(lines) else ""
                body = "\x1b[K\n".join(lines)
                self.stream.write(f"\r{up}{body}\x1b[K{below}")
            self.stream.flush()
            self.shown = len(lines[-1])
            self.rows = len(lines)

    def _clear(self) -> None:
        if self.rows > 1:
            self.stream.write(f"\r\x1b[{self.rows - 1}A\x1b[J")
            self.stream.flush()
        elif self.shown:
            self.stream.write("\r" + " " * self.shown + "\r")
            self.stream.flush()
        self.shown = 0
        self.rows = 0

    def write_through(self, text: str) -> int:
        """Write other output (a log line) to the stream, clearing the bar first; the
        next tick draws it again below."""
        with self.lock:
            self._clear()
            return self.stream.write(text)

    # -- log handlers on the same stream --------------------------------------------

    def _reroute_logging(self) -> None:
        for handler in _handlers_of(logging.getLogger("baton")):
            if isinstance(handler, logging.StreamHandler) and handler.stream is self.stream:
                handler.setStream(self._through)
                self._rerouted.append(handler)

    def _restore_logging(self) -> None:
        for handler in self._rerouted:
            if handler.stream is self._through:
                handler.setStream(self.stream)
        self._rerouted.clear()


def _handlers_of(logger: logging.Logger) -> list[logging.Handler]:
    """Every handler a record of `logger` reaches, as `Logger.callHandlers` walks them."""
    handlers: list[logging.Handler] = []
    current: logging.Logger | None = logger
    while current is not None:
        handlers.extend(current.handlers)
        if not current.propagate:
            break
        current = current.parent
    return handlers


class _ThroughBar:
    """A stream for log handlers that writes through the bar."""

    def __init__(self, bar: _Bar) -> None:
        self._bar = bar

    def write(self, text: str) -> int:
        return self._bar.write_through(text)

    def flush(self) -> None:
        self._bar.stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._bar.stream, name)


_lock = threading.Lock()
_bar: _Bar | None = None
_trackers: dict[int, _Tracker] = {}


@hookimpl
def flow_run_started(flow_run: FlowRun) -> None:
    global _bar
    if not observes_task_runs():
        return
    key = id(flow_run.scope)
    tracker = _Tracker(flow_run)
    with _lock:
        if _bar is None:
            _bar = _Bar(sys.stderr)
        _trackers[key] = tracker
        _bar.add(key, tracker)
    flow_run.scope.on_submit = tracker.submitted


@hookimpl
def flow_run_finished(flow_run: FlowRun, state: State) -> None:
    global _bar
    key = id(flow_run.scope)
    with _lock:
        if _trackers.pop(key, None) is None or _bar is None:
            return
        if _bar.remove(key):
            _bar = None


@hookimpl
def task_run_state_changed(task_run: TaskRun, state: State) -> None:
    tracker = _trackers.get(id(task_run.scope))
    if tracker is not None:
        tracker.changed(task_run, state)
