"""The watchdog of async timeouts: a coroutine that blocks its event loop past its
deadline is noticed from another thread, while the loop is still blocked."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator

import pytest
from baton import _portal
from baton._watchdog import watch, watching

GATE_SECONDS = 10


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """Set at the end, so that a coroutine blocking the shared loop lets it go."""
    event = threading.Event()
    yield event
    event.set()


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_a_coroutine_blocking_the_loop_past_its_deadline_is_ended_while_it_blocks(
    release: threading.Event, caplog: pytest.LogCaptureFixture
) -> None:
    overran = threading.Event()

    async def stuck() -> tuple[str, bool]:
        with watching(0.05, overran.set, "stuck-1") as guard:
            release.wait(GATE_SECONDS)  # blocks the loop, as time.sleep would
        return "returned", guard.overran

    with caplog.at_level(logging.WARNING, logger="baton"):
        running = _portal.submit(stuck())
        assert overran.wait(GATE_SECONDS)
        assert not running.done()  # the coroutine still holds the loop
        release.set()
        # what the coroutine returns after its deadline is to be dropped
        assert running.result(GATE_SECONDS) == ("returned", True)
    [warning] = warnings_of(caplog)
    assert "Async task run 'stuck-1' blocked the event loop past its timeout of 0.05 s" in (warning)
    assert "await asyncio.sleep(...)" in warning
    assert "anyio.to_thread.run_sync(...)" in warning
    assert "make it a sync task" in warning


def test_a_coroutine_that_awaits_past_its_deadline_is_left_to_the_loop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    overran = threading.Event()

    async def awaiting() -> bool:
        with watching(0.01, overran.set, "awaiting-1") as guard:
            while not guard.settled.is_set():  # the loop runs all along
                await asyncio.sleep(0.01)
        return not guard.overran

    with caplog.at_level(logging.WARNING, logger="baton"):
        assert _portal.submit(awaiting()).result(GATE_SECONDS)
    assert not overran.is_set()
    assert warnings_of(caplog) == []


def test_a_run_stalled_by_another_task_is_ended_and_the_blocker_named(
    release: threading.Event, caplog: pytest.LogCaptureFixture
) -> None:
    overran = threading.Event()
    watched = threading.Event()

    async def patient() -> None:
        with watching(0.05, overran.set, "patient-1") as guard:
            watched.set()
            while not guard.settled.is_set():
                await asyncio.sleep(0.01)

    async def hog() -> None:
        release.wait(GATE_SECONDS)

    with caplog.at_level(logging.WARNING, logger="baton"):
        first = _portal.submit(patient())
        assert watched.wait(GATE_SECONDS)
        second = _portal.submit(hog())
        assert overran.wait(GATE_SECONDS)
        release.set()
        first.result(GATE_SECONDS)
        second.result(GATE_SECONDS)
    [warning] = warnings_of(caplog)
    assert "Async task run 'patient-1' could not run past its timeout of 0.05 s" in warning
    assert "(running test_a_run_stalled_by_another_task_is_ended_and_the_blocker_named." in (
        warning
    )
    assert "hog) blocks the event loop" in warning


def test_an_overrun_callback_that_raises_is_logged_and_the_others_still_run(
    release: threading.Event, caplog: pytest.LogCaptureFixture
) -> None:
    overran = threading.Event()

    def broken() -> None:
        raise RuntimeError("cannot record")

    async def stuck() -> None:
        with watching(0.05, broken, "broken-1"), watching(0.05, overran.set, "fine-1"):
            release.wait(GATE_SECONDS)

    with caplog.at_level(logging.WARNING, logger="baton"):
        running = _portal.submit(stuck())
        assert overran.wait(GATE_SECONDS)
        release.set()
        running.result(GATE_SECONDS)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [r.getMessage() for r in errors] == [
        "Ending async task run 'broken-1' after it overran its timeout failed"
    ]


def test_a_run_in_a_task_of_its_own_is_named_as_the_blocker(
    release: threading.Event, caplog: pytest.LogCaptureFixture
) -> None:
    overran = threading.Event()

    async def blocks() -> str:
        release.wait(GATE_SECONDS)
        return "late"

    async def timed() -> str:
        work = blocks()
        with watching(0.05, overran.set, "wrapped-1", work):
            # before Python 3.12, wait_for runs `work` in a task of its own
            return await asyncio.wait_for(work, 0.05)

    with caplog.at_level(logging.WARNING, logger="baton"):
        running = _portal.submit(timed())
        assert overran.wait(GATE_SECONDS)
        release.set()
        assert running.result(GATE_SECONDS) == "late"
    [warning] = warnings_of(caplog)
    assert "Async task run 'wrapped-1' blocked the event loop" in warning


def test_one_thread_watches_every_run() -> None:
    async def many() -> list[str]:
        guards = [watch(60, lambda: None, f"run-{n}") for n in range(200)]
        try:
            return [t.name for t in threading.enumerate() if t.name.startswith("baton-watch")]
        finally:
            for guard in guards:
                guard.cancel()

    assert _portal.submit(many()).result(GATE_SECONDS) == ["baton-watchdog"]
    assert asyncio.run(many()) == ["baton-watchdog"]  # another loop, the same thread
