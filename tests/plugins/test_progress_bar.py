"""The built-in progress bar: when it shows, what it draws, and how it shares stderr
with log lines."""

from __future__ import annotations

import io
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace

import pytest
from baton import _progress, flow, get_runner, task
from baton._settings import Settings
from baton._states import State
from pydantic import ValidationError

GATE_SECONDS = 10


class FakeStream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def screen(text: str) -> list[str]:
    """What a terminal shows for `text`: a carriage return goes back to column 0 and
    later characters overwrite earlier ones."""
    lines = []
    for raw in text.split("\n"):
        cells: list[str] = []
        column = 0
        for char in raw:
            if char == "\r":
                column = 0
                continue
            if column < len(cells):
                cells[column] = char
            else:
                cells.append(char)
            column += 1
        lines.append("".join(cells).rstrip())
    return lines


def wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + GATE_SECONDS
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


@pytest.fixture
def no_progress_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("BATON_PROGRESS", raising=False)
    monkeypatch.setattr(_progress, "DELAY", 0.0)
    monkeypatch.setattr(_progress, "INTERVAL", 0.005)
    monkeypatch.setattr(_progress, "FILE_INTERVAL", 0.005)
    yield
    assert _progress._bar is None
    assert _progress._trackers == {}


@pytest.mark.parametrize(
    ("setting", "tty", "shown"),
    [
        (None, True, True),
        (None, False, False),
        ("auto", True, True),
        ("", False, False),
        ("1", False, True),
        ("true", False, True),
        ("0", True, False),
        ("false", True, False),
    ],
)
def test_shown_on_a_terminal_or_when_asked(
    no_progress_env: None,
    monkeypatch: pytest.MonkeyPatch,
    setting: str | None,
    tty: bool,
    shown: bool,
) -> None:
    if setting is not None:
        monkeypatch.setenv("BATON_PROGRESS", setting)
    monkeypatch.setattr(sys, "stderr", FakeStream(tty))
    assert _progress.observes_task_runs() is shown


def test_the_setting_rejects_other_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATON_PROGRESS", "sometimes")
    with pytest.raises(ValidationError, match="progress"):
        Settings()


class Scope:
    def __init__(self, pending: int) -> None:
        self.pending = pending

    def pending_count(self) -> int:
        return self.pending


class FlowRunStub:
    def __init__(self, pending: int) -> None:
        self.name = "calm-otter"
        self.scope = Scope(pending)


def test_the_bar_text(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_progress, "DELAY", 0.0)
    run = FlowRunStub(pending=6)
    tracker = _progress._Tracker(run)  # type: ignore[arg-type]
    for failed in (False, False, False, True):
        tracker.task_finished(failed)
    start = tracker.started
    text = tracker.line(start + 8)
    assert text == (
        "calm-otter: [#########---------------] 4/10 task runs 40% 8s eta 12s, 1 failed"
    )
    run.scope.pending = 0
    assert tracker.line(start + 3725) == (
        "calm-otter: [########################] 4/4 task runs 100% 1h02m, 1 failed"
    )


def test_no_bar_before_the_delay_or_without_task_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_progress, "DELAY", 0.5)
    tracker = _progress._Tracker(FlowRunStub(pending=3))  # type: ignore[arg-type]
    assert tracker.line(tracker.started + 0.1) is None
    assert tracker.line(tracker.started + 0.6) is not None
    empty = _progress._Tracker(FlowRunStub(pending=0))  # type: ignore[arg-type]
    assert empty.line(empty.started + 10) is None


def test_log_lines_clear_the_bar_and_it_comes_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_progress, "DELAY", 0.0)
    stream = FakeStream(tty=True)
    bar = _progress._Bar(stream)
    stream.write("before\n")
    tracker = _progress._Tracker(FlowRunStub(pending=5))  # type: ignore[arg-type]
    bar.trackers[1] = tracker
    bar.draw()
    assert screen(stream.getvalue())[-1].startswith("calm-otter: [")
    bar.write_through("a log line\n")
    bar.draw()
    shown = screen(stream.getvalue())
    assert shown[:2] == ["before", "a log line"]
    assert shown[2].startswith("calm-otter: [")
    bar.trackers.clear()
    bar.draw()
    assert screen(stream.getvalue()) == ["before", "a log line", ""]


def test_a_long_flow_shows_a_bar_and_log_lines_stay_whole(
    no_progress_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream = FakeStream(tty=False)
    monkeypatch.setattr(sys, "stderr", stream)
    monkeypatch.setenv("BATON_PROGRESS", "1")
    monkeypatch.setenv("BATON_LOG_LEVEL", "INFO")
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    baton_logger = logging.getLogger("baton")
    baton_logger.addHandler(handler)
    release = threading.Event()
    during: dict[str, object] = {}

    @task
    def held(i: int) -> int:
        assert release.wait(GATE_SECONDS)
        return i

    @flow(task_runner=get_runner("thread", max_workers=4))
    def long_map() -> int:
        futures = held.map(range(8))
        wait_until(lambda: "0/8 task runs" in stream.getvalue())
        during["handler stream"] = handler.stream
        baton_logger.warning("between bars")
        mark = stream.getvalue().index("between bars")
        wait_until(lambda: "task runs" in stream.getvalue()[mark:])
        release.set()
        return sum(f.result() for f in futures)

    try:
        assert long_map() == 28
    finally:
        release.set()
        baton_logger.removeHandler(handler)
    assert during["handler stream"] is not stream  # written through the bar meanwhile
    assert handler.stream is stream  # and given back
    shown = screen(stream.getvalue())
    assert "between bars" in shown
    assert shown[-1] == ""  # the bar is cleared at the end
    assert not [line for line in shown if "task runs" in line]  # never glued to a log line
    assert "\x1b" not in stream.getvalue()  # no terminal control sequences in a file
    assert "held.map" not in stream.getvalue()  # nor the lines of maps and tasks
    assert any(line.startswith("Flow run ") for line in shown)


def test_off_a_terminal_and_unasked_nothing_is_written(
    no_progress_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream = FakeStream(tty=False)
    monkeypatch.setattr(sys, "stderr", stream)
    monkeypatch.setenv("BATON_LOG_LEVEL", "WARNING")
    seen: list[object] = []

    @task
    def one(i: int) -> int:
        return i

    @flow(task_runner="thread")
    def short_map() -> int:
        futures = one.map(range(20))
        seen.append(_progress._bar)
        return sum(f.result() for f in futures)

    assert short_map() == 190
    assert seen == [None]
    assert stream.getvalue() == ""


class TerminalStream(FakeStream):
    def fileno(self) -> int:
        return 2


@pytest.mark.parametrize("reported", [0, 1])
def test_a_terminal_reporting_no_width_gets_80_columns(
    monkeypatch: pytest.MonkeyPatch, reported: int
) -> None:
    """Some terminals (serial consoles, some CI log viewers) report 0 columns."""
    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.setattr(os, "get_terminal_size", lambda fd=0: os.terminal_size((reported, 0)))
    bar = _progress._Bar(TerminalStream(tty=True))
    assert bar.columns == 80
    text = "calm-otter: " + "x" * 60
    bar.trackers[1] = Fixed(text)  # type: ignore[assignment]
    bar.draw()
    assert screen(bar.stream.getvalue()) == [text]  # type: ignore[attr-defined]


def test_the_terminal_width_is_used_when_it_is_sensible(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "get_terminal_size", lambda fd=0: os.terminal_size((40, 24)))
    bar = _progress._Bar(TerminalStream(tty=True))
    bar.trackers[1] = Fixed("y" * 60)  # type: ignore[assignment]
    bar.draw()
    assert screen(bar.stream.getvalue()) == ["y" * 39]  # type: ignore[attr-defined]


class Fixed:
    """A tracker whose bar line is always `text`."""

    def __init__(self, text: str) -> None:
        self.text = text

    def line(self, now: float) -> str:
        return self.text

    def lines(self, now: float) -> list[str]:
        return [self.text]


# -- maps and tasks, a line each -----------------------------------------------------------

_CONTROL = re.compile(r"\x1b\[(\d*)([AJK])|[\r\n]|[^\x1b\r\n]")


def terminal_screen(text: str) -> list[str]:
    """What a terminal shows for `text`, with the control sequences the bar uses: ``\\r``,
    ``\\n``, cursor up (``ESC[nA``), erase to the end of the line (``ESC[K``) and to the
    end of the screen (``ESC[J``)."""
    rows: list[list[str]] = [[]]
    row = column = 0
    for match in _CONTROL.finditer(text):
        token = match.group(0)
        if token == "\r":
            column = 0
        elif token == "\n":
            row, column = row + 1, 0
            while len(rows) <= row:
                rows.append([])
        elif match.group(2) == "A":
            row = max(0, row - int(match.group(1) or 1))
        elif match.group(2) == "K":
            del rows[row][column:]
        elif match.group(2) == "J":
            del rows[row][column:]
            del rows[row + 1 :]
        else:
            cells = rows[row]
            cells.extend(" " * (column + 1 - len(cells)))
            cells[column] = token
            column += 1
    return ["".join(cells).rstrip() for cells in rows]


def test_the_terminal_screen_of_the_tests() -> None:
    assert terminal_screen("abc\rX") == ["Xbc"]
    assert terminal_screen("one\ntwo\nthree\r\x1b[2Ahi\x1b[K\nz\x1b[J") == ["hi", "z"]


def _run(run_id: int, task_name: str, map_id: int | None = None) -> SimpleNamespace:
    return SimpleNamespace(
        id=run_id,
        map_id=map_id,
        task=SimpleNamespace(name=task_name),
        future=SimpleNamespace(done=lambda: False),
    )


def test_each_map_and_each_submitted_task_gets_a_line_of_counts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_progress, "DELAY", 0.0)
    tracker = _progress._Tracker(FlowRunStub(pending=7))  # type: ignore[arg-type]
    mapped = [_run(i, "double", map_id=41) for i in range(5)]
    again = [_run(10 + i, "double", map_id=42) for i in range(2)]
    load = [_run(20 + i, "load") for i in range(2)]
    for run in mapped + again + load:
        tracker.submitted(run)  # type: ignore[arg-type]
    events = [
        (mapped[0], State.running()),
        (mapped[0], State.completed(0)),
        (mapped[1], State.running()),
        (mapped[1], State.failed(ValueError("no"))),
        (mapped[2], State.running()),
        (mapped[3], State.running()),
        (mapped[3], State.pending("Retrying")),  # between attempts: pending again
        (load[0], State.running()),
        (load[0], State.completed(1)),
        (load[1], State.running()),
        (load[1], State.completed(2)),
    ]
    for run, state in events:
        tracker.changed(run, state)  # type: ignore[arg-type]
    lines = tracker.lines(tracker.started + 1)
    assert lines == [
        "calm-otter: [########----------------] 4/11 task runs 36% 1s eta 1s, 1 failed",
        "  double.map: 1 done, 1 failed, 1 running, 2 pending",
        "  double.map #2: 0 done, 0 failed, 0 running, 2 pending",
        "  load: 2 done, 0 failed, 0 running, 0 pending",
    ]


def test_past_the_limit_the_other_groups_share_a_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_progress, "DELAY", 0.0)
    monkeypatch.setattr(_progress, "MAX_GROUPS", 3)
    tracker = _progress._Tracker(FlowRunStub(pending=5))  # type: ignore[arg-type]
    for number in range(5):
        run = _run(number, f"step{number}")
        tracker.submitted(run)  # type: ignore[arg-type]
        if number == 0:
            tracker.changed(run, State.completed())  # type: ignore[arg-type]
    lines = tracker.lines(tracker.started + 1)
    assert lines is not None
    assert lines[1:] == [  # those with runs to go first
        "  step1: 0 done, 0 failed, 0 running, 1 pending",
        "  step2: 0 done, 0 failed, 0 running, 1 pending",
        "  3 more: 1 done, 0 failed, 0 running, 2 pending",
    ]


def test_on_a_terminal_a_flow_shows_its_maps_and_tasks_a_line_each(
    no_progress_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream = FakeStream(tty=True)
    monkeypatch.setattr(sys, "stderr", stream)
    monkeypatch.setenv("BATON_LOG_LEVEL", "WARNING")
    release = threading.Event()
    during: list[list[str]] = []

    @task
    def held(i: int) -> int:
        assert release.wait(GATE_SECONDS)
        return i

    @task
    def quick(i: int) -> int:
        return i

    @task
    def failing() -> None:
        raise ValueError("expected")

    def shown() -> list[str]:
        return terminal_screen(stream.getvalue())

    @flow(task_runner=get_runner("thread", max_workers=2))
    def grouped() -> int:
        quick.submit(1).result()
        failed = failing.submit()
        failed.wait()
        assert failed.state.is_failed()
        first = held.map(range(5))
        second = held.map([7])
        wait_until(lambda: "  held.map: 0 done, 0 failed, 2 running, 3 pending" in shown())
        wait_until(lambda: "  held.map #2: 0 done, 0 failed, 0 running, 1 pending" in shown())
        during.append(shown())
        release.set()
        return sum(first.result()) + sum(second.result())

    try:
        assert grouped() == 17
    finally:
        release.set()
    [screen_then] = during
    assert " 2/8 task runs " in screen_then[0]
    assert screen_then[1:] == [
        "  held.map: 0 done, 0 failed, 2 running, 3 pending",
        "  held.map #2: 0 done, 0 failed, 0 running, 1 pending",
        "  quick: 1 done, 0 failed, 0 running, 0 pending",
        "  failing: 0 done, 1 failed, 0 running, 0 pending",
    ]
    assert shown() == [""]  # all of it erased at the end
