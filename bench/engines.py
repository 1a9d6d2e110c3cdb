"""Each runner beside the raw engine it sits on, doing the same no-op work."""

from __future__ import annotations

import concurrent.futures as cf
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import baton

Batch = Callable[[int], None]  # runs n no-op tasks to completion


def noop(x: int) -> int:
    return x


@dataclass(frozen=True)
class Engine:
    """A runner name and how to run n no-op tasks on it and on its raw engine."""

    runner: str
    raw_name: str
    raw_map: Callable[[], contextmanager[Batch]]  # type: ignore[type-arg]
    baton_options: dict[str, object]


@contextmanager
def _thread_pool() -> Iterator[Batch]:
    with cf.ThreadPoolExecutor() as pool:

        def batch(n: int) -> None:
            futures = [pool.submit(noop, i) for i in range(n)]
            for future in futures:
                future.result()

        yield batch


@contextmanager
def _process_pool() -> Iterator[Batch]:
    with cf.ProcessPoolExecutor(max_workers=os.cpu_count()) as pool:

        def batch(n: int) -> None:
            futures = [pool.submit(noop, i) for i in range(n)]
            for future in futures:
                future.result()

        batch(100)  # start the workers outside the timing
        yield batch


@contextmanager
def _inline() -> Iterator[Batch]:
    def batch(n: int) -> None:
        for i in range(n):
            noop(i)

    yield batch


ENGINES: dict[str, Engine] = {
    "thread": Engine("thread", "ThreadPoolExecutor", _thread_pool, {}),
    "sync": Engine("sync", "plain loop", _inline, {}),
    "process": Engine("process", "ProcessPoolExecutor", _process_pool, {}),
}


def available() -> list[str]:
    """Runners of `ENGINES` that are installed here."""
    installed = {info.name for info in baton.list_runners()}
    return [name for name in ENGINES if name in installed]
