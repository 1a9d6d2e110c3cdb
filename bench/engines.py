"""Each runner beside the raw engine it sits on, doing the same work.

An engine is opened once per runner (pools started, cluster up) and kept warm for
every scenario, with `task_runner` the Baton runner to measure beside it: a started
runner on the same pool size or the very same cluster, so that neither side pays a
start-up the other does not.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any

import baton


def noop(x: int) -> int:
    return x


def size(values: Any) -> int:
    return len(values)


def count(*values: Any) -> int:
    return len(values)


def make_bytes(nbytes: int) -> bytes:
    return b"\x01" * nbytes


def noop_chunk(items: list[int]) -> list[int]:
    """What a hand-batched engine call does: the no-op task over a chunk of items."""
    return [noop(x) for x in items]


def nap(seconds: float) -> float:
    import time

    time.sleep(seconds)
    return seconds


def chunks(n: int, size: int) -> list[list[int]]:
    return [list(range(start, min(n, start + size))) for start in range(0, n, size)]


class RawEngine:
    """The raw engine's way of doing each scenario's work; `task_runner` is what the
    Baton side of each pair runs on."""

    task_runner: str | baton.TaskRunner

    chunk_size: int | None = None
    """Items per engine call when batched by hand (`chunked`), None for an engine that
    is not measured so; each engine sets the one that was fastest for 10,000 items on a
    2-core machine, among 250, 500, 1,000 and 2,500."""

    def chunked(self, n: int) -> None:
        """n no-op items batched by hand: chunks of `chunk_size`, one engine call each,
        every result gathered."""
        raise NotImplementedError

    def map(self, n: int) -> None:
        """n no-op tasks through the engine's own map (a submit loop where it has none)."""
        raise NotImplementedError

    def submit(self, n: int) -> None:
        """n no-op tasks submitted one by one, then every result read."""
        raise NotImplementedError

    def chain(self, n: int) -> int:
        """n no-op tasks, each taking the previous one's result."""
        raise NotImplementedError

    def fan(self, n: int) -> int:
        """n no-op tasks, then one task over all their results."""
        raise NotImplementedError

    def naps(self, n: int, seconds: float) -> None:
        """n tasks that each sleep `seconds`, one engine call each."""
        raise NotImplementedError


class LocalityEngine(RawEngine):
    """A cluster engine: the result of one task can feed another without the driver."""

    chunk_size: int | None = 1000

    def direct(self, nbytes: int) -> int:
        """A task makes `nbytes` bytes, another returns their length; the engine's own
        futures pass the data from worker to worker."""
        raise NotImplementedError

    def through_driver(self, nbytes: int) -> int:
        """The same, with the bytes fetched to the driver and sent back."""
        raise NotImplementedError


@dataclass(frozen=True)
class Engine:
    """A runner name, its raw engine, and the largest N worth running on it."""

    runner: str
    raw_name: str
    open: Callable[[], AbstractContextManager[RawEngine]]
    max_n: int | None = None
    max_n_reason: str = ""


class _Executor(RawEngine):
    def __init__(
        self,
        pool: cf.Executor,
        task_runner: str | baton.TaskRunner,
        chunk_size: int | None = None,
    ) -> None:
        self.pool = pool
        self.task_runner = task_runner
        self.chunk_size = chunk_size

    def chunked(self, n: int) -> None:
        # The executor's own knob for it: `ProcessPoolExecutor.map(chunksize=)`.
        for _ in self.pool.map(noop, range(n), chunksize=self.chunk_size or 1):
            pass

    def map(self, n: int) -> None:
        for _ in self.pool.map(noop, range(n)):
            pass

    def submit(self, n: int) -> None:
        futures = [self.pool.submit(noop, i) for i in range(n)]
        for future in futures:
            future.result()

    def chain(self, n: int) -> int:
        value = 0
        for _ in range(n):
            value = self.pool.submit(noop, value).result()
        return value

    def fan(self, n: int) -> int:
        futures = [self.pool.submit(noop, i) for i in range(n)]
        return self.pool.submit(size, [f.result() for f in futures]).result()

    def naps(self, n: int, seconds: float) -> None:
        """n tasks that each sleep `seconds`, one call each."""
        for _ in self.pool.map(nap, [seconds] * n):
            pass


@contextmanager
def _thread_pool() -> Iterator[RawEngine]:
    # Baton's thread runner is named, as users select it: a flow run's own pool of
    # threads costs little to start, unlike worker processes.
    with cf.ThreadPoolExecutor() as pool:
        yield _Executor(pool, "thread")


@contextmanager
def _process_pool() -> Iterator[RawEngine]:
    workers = os.cpu_count() or 1
    with (
        cf.ProcessPoolExecutor(max_workers=workers) as pool,
        baton.get_runner("process", max_workers=workers) as runner,
    ):
        engine = _Executor(pool, runner, chunk_size=2500)
        engine.submit(100)  # start the workers outside the timing
        yield engine


class _Inline(RawEngine):
    task_runner = "sync"

    def map(self, n: int) -> None:
        for i in range(n):
            noop(i)

    submit = map

    def chain(self, n: int) -> int:
        value = 0
        for _ in range(n):
            value = noop(value)
        return value

    def fan(self, n: int) -> int:
        return size([noop(i) for i in range(n)])


@contextmanager
def _inline() -> Iterator[RawEngine]:
    yield _Inline()


class _Dask(LocalityEngine):
    """`client.map`/`client.submit` + `client.gather` on a cluster; `task_runner` is a
    started Baton runner on the same cluster, so both use the very same workers."""

    chunk_size = 250

    def __init__(self, client: Any, task_runner: baton.TaskRunner) -> None:
        self.client = client
        self.task_runner = task_runner

    def map(self, n: int) -> None:
        self.client.gather(self.client.map(noop, range(n), pure=False))

    def submit(self, n: int) -> None:
        submit = self.client.submit
        self.client.gather([submit(noop, i, pure=False) for i in range(n)])

    def chain(self, n: int) -> int:
        submit = self.client.submit
        future = submit(noop, 0, pure=False)
        for _ in range(n - 1):
            future = submit(noop, future, pure=False)
        return int(future.result())

    def fan(self, n: int) -> int:
        futures = self.client.map(noop, range(n), pure=False)
        return int(self.client.submit(size, futures, pure=False).result())

    def direct(self, nbytes: int) -> int:
        submit = self.client.submit
        return int(submit(size, submit(make_bytes, nbytes, pure=False), pure=False).result())

    def chunked(self, n: int) -> None:
        parts = self.client.map(noop_chunk, chunks(n, self.chunk_size), pure=False)
        self.client.gather(parts)

    def naps(self, n: int, seconds: float) -> None:
        self.client.gather(self.client.map(nap, [seconds] * n, pure=False))

    def through_driver(self, nbytes: int) -> int:
        data = self.client.submit(make_bytes, nbytes, pure=False).result()
        # scatter is how Dask takes a large value from the driver (a task argument
        # of this size would sit in the graph).
        back = self.client.scatter(data, hash=False)
        del data
        return int(self.client.submit(size, back, pure=False).result())


@contextmanager
def _dask_cluster() -> Iterator[RawEngine]:
    from baton_dask import DaskTaskRunner
    from distributed import Client, LocalCluster

    with (
        LocalCluster(processes=True, host="127.0.0.1", dashboard_address=":0") as cluster,
        Client(cluster, set_as_default=False) as client,
        DaskTaskRunner(cluster.scheduler_address) as runner,
    ):
        engine = _Dask(client, runner)
        engine.map(100)  # start the connections outside the timing
        yield engine


class _Ray(LocalityEngine):
    """`f.remote` for each item + `ray.get`; `task_runner` is a started Baton runner on
    the same Ray, so both use the very same workers."""

    chunk_size = 2500

    def __init__(self, task_runner: baton.TaskRunner) -> None:
        import ray

        self.task_runner = task_runner
        remote = ray.remote(max_retries=0)
        self.get = ray.get
        self.noop = remote(noop)
        self.count = remote(count)
        self.size = remote(size)
        self.make_bytes = remote(make_bytes)
        self.noop_chunk = remote(noop_chunk)
        self.nap = remote(nap)

    def map(self, n: int) -> None:
        remote = self.noop.remote
        self.get([remote(i) for i in range(n)])

    submit = map  # Ray has no map of its own

    def chain(self, n: int) -> int:
        remote = self.noop.remote
        ref = remote(0)
        for _ in range(n - 1):
            ref = remote(ref)
        return int(self.get(ref))

    def fan(self, n: int) -> int:
        remote = self.noop.remote
        # Ray resolves only ObjectRefs passed as arguments themselves, not in a list.
        return int(self.get(self.count.remote(*[remote(i) for i in range(n)])))

    def direct(self, nbytes: int) -> int:
        return int(self.get(self.size.remote(self.make_bytes.remote(nbytes))))

    def chunked(self, n: int) -> None:
        remote = self.noop_chunk.remote
        self.get([remote(part) for part in chunks(n, self.chunk_size)])

    def naps(self, n: int, seconds: float) -> None:
        remote = self.nap.remote
        self.get([remote(seconds) for _ in range(n)])

    def through_driver(self, nbytes: int) -> int:
        data = self.get(self.make_bytes.remote(nbytes))
        ref = self.size.remote(data)
        del data
        return int(self.get(ref))


@contextmanager
def _ray_local() -> Iterator[RawEngine]:
    import ray
    from baton_ray import RayTaskRunner

    started = not ray.is_initialized()
    if started:
        # Workers import this module's functions by name.
        path = os.pathsep.join([os.getcwd(), *(p for p in sys.path if p)])
        ray.init(
            include_dashboard=False,
            log_to_driver=False,
            runtime_env={"env_vars": {"PYTHONPATH": path}},
        )
    try:
        with RayTaskRunner() as runner:
            engine = _Ray(runner)
            engine.map(100)  # start the workers outside the timing
            yield engine
    finally:
        if started:
            ray.shutdown()


ENGINES: dict[str, Engine] = {
    "thread": Engine("thread", "ThreadPoolExecutor", _thread_pool),
    "sync": Engine("sync", "plain loop", _inline),
    "process": Engine("process", "ProcessPoolExecutor", _process_pool),
    "dask": Engine(
        "dask",
        "distributed client.map/submit + gather",
        _dask_cluster,
        max_n=10_000,
        max_n_reason="a Dask scheduler costs milliseconds per task on a small machine: "
        "100,000 tasks for each repeat, side (Baton, raw) and mode (map, submit) would take "
        "hours",
    ),
    "ray": Engine(
        "ray",
        "ray f.remote + ray.get",
        _ray_local,
        max_n=10_000,
        max_n_reason="Ray costs about a millisecond per task on a small machine: 100,000 "
        "tasks for each repeat, side (Baton, raw) and mode (map, submit) would take most "
        "of an hour",
    ),
}


def available() -> list[str]:
    """Runners of `ENGINES` that are installed here."""
    installed = {info.name for info in baton.list_runners()}
    return [name for name in ENGINES if name in installed]
