"""Synchronisation between task runs that works across threads and processes.

Runs meet through marker files in one directory. That works wherever the runner
executes them on this machine (threads, worker processes, a local cluster), and the
object pickles as a plain path. Waiting polls the directory; the poll interval is
never what a test's verdict rests on: a verdict rests on which markers exist.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import final

__all__ = ["WAIT_SECONDS", "Rendezvous", "RendezvousAborted", "RendezvousTimeout"]

WAIT_SECONDS = 20.0
"""How long a run waits for a marker before giving up: a safety net, never a verdict."""

_ABORT = "__abort__"


class RendezvousTimeout(TimeoutError):
    """A marker did not appear in time: the runs that should have met did not."""


class RendezvousAborted(RuntimeError):
    """The test that owned the rendezvous ended; runs still waiting give up at once."""


@final
class Rendezvous:
    """Named markers in a directory, for runs to signal and wait on each other."""

    __slots__ = ("directory",)

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = str(directory)

    def __reduce__(self) -> tuple[type[Rendezvous], tuple[str]]:
        return (Rendezvous, (self.directory,))

    def __repr__(self) -> str:
        return f"Rendezvous({self.directory!r})"

    def _path(self, name: str) -> Path:
        if not name or "/" in name or os.sep in name or name.startswith("."):
            raise ValueError(f"marker names are plain file names, got {name!r}")
        return Path(self.directory, name)

    # -- markers ------------------------------------------------------------------

    def signal(self, name: str, text: str = "") -> None:
        """Create marker `name` (with `text`), atomically: a waiter never sees it half-written."""
        path = self._path(name)
        scratch = path.with_name(f".{name}.{uuid.uuid4().hex}")
        scratch.write_text(text)
        os.replace(scratch, path)

    def is_set(self, name: str) -> bool:
        return self._path(name).exists()

    def read(self, name: str) -> str:
        return self._path(name).read_text()

    def record(self, prefix: str, text: str = "") -> int:
        """Add one more marker named `prefix-…` and return how many there are now.

        Used to count attempts of a run, wherever each attempt executes.
        """
        self.signal(f"{prefix}-{time.time_ns()}-{uuid.uuid4().hex[:8]}", text)
        return len(self.records(prefix))

    def records(self, prefix: str) -> list[str]:
        """The texts of the markers `record(prefix)` made, oldest first."""
        found = sorted(
            p for p in Path(self.directory).glob(f"{prefix}-*") if not p.name.startswith(".")
        )
        return [p.read_text() for p in found]

    # -- waiting ------------------------------------------------------------------

    def _ready(self, names: tuple[str, ...]) -> bool:
        if Path(self.directory, _ABORT).exists():
            raise RendezvousAborted(f"gave up waiting for {', '.join(names)}: the test ended")
        return all(self._path(n).exists() for n in names)

    def wait(self, *names: str, timeout: float = WAIT_SECONDS) -> None:
        """Block until every named marker exists; `RendezvousTimeout` after `timeout` s."""
        deadline = time.monotonic() + timeout
        pause = 0.001
        while not self._ready(names):
            if time.monotonic() > deadline:
                raise RendezvousTimeout(
                    f"waited {timeout:g} s for {', '.join(map(repr, names))}, which never came"
                )
            time.sleep(pause)
            pause = min(pause * 2, 0.02)

    async def wait_async(self, *names: str, timeout: float = WAIT_SECONDS) -> None:
        """`wait` for async code: polls with `asyncio.sleep`, so the event loop goes on."""
        import asyncio

        deadline = time.monotonic() + timeout
        pause = 0.001
        while not self._ready(names):
            if time.monotonic() > deadline:
                raise RendezvousTimeout(
                    f"waited {timeout:g} s for {', '.join(map(repr, names))}, which never came"
                )
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.02)

    def meet(self, name: str, parties: tuple[str, ...], timeout: float = WAIT_SECONDS) -> None:
        """Arrive as `name` and wait until every one of `parties` has arrived: a barrier.

        Returning proves that all the parties were running at the same time.
        """
        self.signal(f"arrived-{name}")
        try:
            self.wait(*(f"arrived-{p}" for p in parties), timeout=timeout)
        except RendezvousTimeout:
            missing = [p for p in parties if not self.is_set(f"arrived-{p}")]
            raise RendezvousTimeout(
                f"run {name!r} waited {timeout:g} s for {', '.join(map(repr, missing))} to be "
                "running at the same time, in vain: the runner did not run them at once. The "
                "kit needs a runner that runs at least two task runs at a time."
            ) from None

    async def meet_async(
        self, name: str, parties: tuple[str, ...], timeout: float = WAIT_SECONDS
    ) -> None:
        """`meet` for async code."""
        self.signal(f"arrived-{name}")
        try:
            await self.wait_async(*(f"arrived-{p}" for p in parties), timeout=timeout)
        except RendezvousTimeout:
            missing = [p for p in parties if not self.is_set(f"arrived-{p}")]
            raise RendezvousTimeout(
                f"async run {name!r} waited {timeout:g} s for {', '.join(map(repr, missing))} "
                "to be running at the same time, in vain."
            ) from None

    def abort(self) -> None:
        """Make every current and future wait give up at once (the test is over)."""
        self.signal(_ABORT)
