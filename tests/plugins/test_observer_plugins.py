"""Observer hooks implemented by installed plugins, and what a flow run pays for them."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest
from baton import State, _logging, _plugins, _progress, flow, get_runner, task, wait

if TYPE_CHECKING:
    from conftest import Site

RECORDER = """
    import threading
    from baton import hookimpl

    LISTENING = True
    events = []
    lock = threading.Lock()

    def observes_task_runs():
        return LISTENING

    @hookimpl
    def flow_run_started(flow_run):
        events.append(("started", flow_run.name, flow_run.flow.name, dict(flow_run.parameters)))

    @hookimpl
    def flow_run_finished(flow_run, state):
        events.append(("finished", flow_run.name, state.name, flow_run.end_time is not None))

    @hookimpl
    def task_run_state_changed(task_run, state):
        with lock:
            events.append(("task", task_run.name, state.name))
"""


@task
def square(x: int) -> int:
    if x < 0:
        raise ValueError("negative")
    return x * x


@pytest.fixture
def quiet_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The built-in logging observer below INFO, the progress bar off."""
    level = _logging.logger.level
    monkeypatch.setenv("BATON_LOG_LEVEL", "WARNING")
    monkeypatch.setenv("BATON_PROGRESS", "0")
    yield
    _logging.logger.setLevel(level)


def recorder(site: Site) -> Any:
    site.dist("recorder-dist", {"recorder": "recorder_pkg"}, {"recorder_pkg": RECORDER})
    _plugins.plugin_manager()
    return sys.modules["recorder_pkg"]


def test_observer_hooks_see_the_flow_run_and_every_task_run(
    site: Site, quiet_logging: None
) -> None:
    module = recorder(site)

    @flow(task_runner="sync")
    def squares(xs: list[int]) -> list[State]:
        futures = square.map(xs)
        wait(futures)
        return [f.state for f in futures]

    states = squares([2, -1])
    names = [s.name for s in states]
    assert names == ["Completed", "Failed"]
    events = module.events
    started, *task_events, finished = events
    assert started[0] == "started"
    assert started[2:] == ("squares", {"xs": [2, -1]})
    assert finished == ("finished", started[1], "Completed", True)
    by_run: dict[str, list[str]] = {}
    for kind, run_name, state_name in task_events:
        assert kind == "task"
        by_run.setdefault(run_name, []).append(state_name)
    assert sorted(by_run.values()) == [["Running", "Completed"], ["Running", "Failed"]]


def test_a_plugin_that_does_not_listen_is_left_out_per_flow_run(
    site: Site, quiet_logging: None
) -> None:
    module = recorder(site)
    module.LISTENING = False

    @flow(task_runner="sync")
    def one() -> int:
        return square(3)

    assert one() == 9
    assert [e[0] for e in module.events] == ["started", "finished"]
    assert _plugins.make_observer(_plugins.plugin_manager()) is None

    module.LISTENING = True
    module.events.clear()
    assert one() == 9
    assert [e[0] for e in module.events] == ["started", "task", "task", "finished"]


def test_nothing_is_called_per_task_when_nobody_listens(
    fresh_plugins: None, quiet_logging: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Logging below INFO and no progress bar: no per-task observer at all."""
    seen: list[Any] = []

    @flow(task_runner="sync")
    def probe() -> int:
        from baton import current_task_run

        @task
        def scope_observer() -> Any:
            run = current_task_run()
            assert run is not None
            return run.scope.observe

        seen.append(scope_observer())
        return 1

    probe()
    assert seen == [None]

    monkeypatch.setenv("BATON_PROGRESS", "1")
    monkeypatch.setattr(sys, "stderr", _NullStream())
    seen.clear()
    probe()
    assert callable(seen[0])


def test_make_observer_calls_only_the_plugins_that_listen(
    fresh_plugins: None, quiet_logging: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    pm = _plugins.plugin_manager()
    _logging.configure("WARNING")
    assert _plugins.make_observer(pm) is None

    monkeypatch.setenv("BATON_PROGRESS", "1")
    observe = _plugins.make_observer(pm)
    assert observe is not None

    class Scope:
        pass

    class Task:
        name = "probe"

    class Future:
        def done(self) -> bool:
            return False

    class Run:
        scope = Scope()
        name = "probe-1"
        id = 1
        task = Task()
        map_id = None
        future = Future()

    tracker = _progress._Tracker(Run())  # type: ignore[arg-type]
    monkeypatch.setitem(_progress._trackers, id(Run.scope), tracker)
    observe(Run(), State.completed(1))  # type: ignore[arg-type]
    observe(Run(), State.failed(ValueError("x")))  # type: ignore[arg-type]
    observe(Run(), State.running())  # type: ignore[arg-type]
    assert (tracker.finished, tracker.failed) == (2, 1)


def test_a_hook_that_raises_is_logged_and_the_flow_goes_on(
    site: Site, quiet_logging: None, caplog: pytest.LogCaptureFixture
) -> None:
    site.dist(
        "raiser-dist",
        {"raiser": "raiser_pkg"},
        {
            "raiser_pkg": """
                from baton import hookimpl

                @hookimpl
                def flow_run_started(flow_run):
                    raise RuntimeError("observer broke at start")

                @hookimpl
                def task_run_state_changed(task_run, state):
                    raise RuntimeError("observer broke per task")
            """
        },
    )

    @flow(task_runner="sync")
    def one() -> int:
        return square(4)

    with caplog.at_level(logging.ERROR, logger="baton"):
        assert one() == 16
    messages = [r.getMessage() for r in caplog.records]
    assert any("flow_run_started hook raised" in m for m in messages)
    assert any("task_run_state_changed hook raised" in m for m in messages)
    errors = [r.exc_info[1] for r in caplog.records if r.exc_info]
    assert any(str(e) == "observer broke per task" for e in errors)


_tries: dict[str, int] = {}


@task(retries=1)
def flaky_once(key: str) -> str:
    _tries[key] = _tries.get(key, 0) + 1
    if _tries[key] == 1:
        raise ValueError("first try fails")
    return key


def test_a_lone_hook_that_raises_at_every_state_changes_no_run(
    site: Site, quiet_logging: None, caplog: pytest.LogCaptureFixture
) -> None:
    # One plain hook is the flow run's observer itself (no wrapper): each place that
    # calls it (a run starting, retrying, ending, cancelled before it ran) logs what it
    # raises and goes on.
    site.dist(
        "lone-raiser-dist",
        {"lone_raiser": "lone_raiser_pkg"},
        {
            "lone_raiser_pkg": """
                from baton import hookimpl

                @hookimpl
                def task_run_state_changed(task_run, state):
                    raise RuntimeError(f"observer broke at {state.name}")
            """
        },
    )
    _plugins.plugin_manager()
    import threading

    gate = threading.Event()

    @task
    def blocker() -> None:
        gate.wait(10)

    @flow(task_runner=get_runner("thread", max_workers=1))
    def busy() -> list[str]:
        first = blocker.submit()
        queued = square.submit(2)
        assert queued.cancel()
        gate.set()
        first.result()
        return [queued.state.name, flaky_once.submit("a").result()]

    with caplog.at_level(logging.ERROR, logger="baton"):
        names = busy()
    assert names == ["Cancelled", "a"]
    errors = {str(r.exc_info[1]) for r in caplog.records if r.exc_info}
    assert {
        "observer broke at Running",
        "observer broke at Retrying",
        "observer broke at Completed",
        "observer broke at Cancelled",
    } <= errors


class _NullStream:
    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


def test_one_observer_raising_does_not_silence_another(
    site: Site, quiet_logging: None, caplog: pytest.LogCaptureFixture
) -> None:
    module = recorder(site)
    site.dist(
        "states-only-dist",
        {"states": "states_only_pkg"},
        {
            "states_only_pkg": """
                from baton import hookimpl

                seen = []

                @hookimpl
                def task_run_state_changed(state):
                    seen.append(state.name)
                    raise RuntimeError("observer broke per task")
            """
        },
    )
    _plugins.reset()

    @flow(task_runner="sync")
    def one() -> int:
        return square(5)

    with caplog.at_level(logging.ERROR, logger="baton"):
        assert one() == 25
    assert sys.modules["states_only_pkg"].seen == ["Running", "Completed"]
    assert [e[2] for e in module.events if e[0] == "task"] == ["Running", "Completed"]
    assert sum("task_run_state_changed hook raised" in r.getMessage() for r in caplog.records) == 2
