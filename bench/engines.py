"""Each runner beside the raw engine it sits on, doing the same no-op work."""

from __future__ import annotations

import concurrent.futures as cf
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

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


class _DaskBatch:
    """`client.map` + `client.gather` on a cluster; `task_runner` is a started Baton runner
    on the same cluster, so that Baton is measured against the very same workers."""

    def __init__(self, client: Any, task_runner: Any) -> None:
        self.client = client
        self.task_runner = task_runner

    def __call__(self, n: int) -> None:
        client = self.client
        client.gather(client.map(noop, range(n), pure=False))


@contextmanager
def _dask_cluster() -> Iterator[Batch]:
    from baton_dask import DaskTaskRunner
    from distributed import Client, LocalCluster

    with (
        LocalCluster(processes=True, host="127.0.0.1", dashboard_address=":0") as cluster,
        Client(cluster, set_as_default=False) as client,
        DaskTaskRunner(cluster.scheduler_address) as runner,
    ):
        batch = _DaskBatch(client, runner)
        batch(100)  # start the connections outside the timing
        yield batch


class _RayBatch:
    """`f.remote` for each item + one `ray.get`; `task_runner` is a started Baton runner on
    the same Ray, so that Baton is measured against the very same workers."""

    def __init__(self, remote: Any, task_runner: Any) -> None:
        self.remote = remote
        self.task_runner = task_runner

    def __call__(self, n: int) -> None:
        import ray

        remote = self.remote
        ray.get([remote.remote(i) for i in range(n)])


@contextmanager
def _ray_local() -> Iterator[Batch]:
    import sys

    import ray
    from baton_ray import RayTaskRunner

    started = not ray.is_initialized()
    if started:
        # Workers import `noop` from this module by name.
        path = os.pathsep.join([os.getcwd(), *(p for p in sys.path if p)])
        ray.init(
            include_dashboard=False,
            log_to_driver=False,
            runtime_env={"env_vars": {"PYTHONPATH": path}},
        )
    try:
        with RayTaskRunner() as runner:
            batch = _RayBatch(ray.remote(max_retries=0)(noop), runner)
            batch(100)  # start the workers outside the timing
            yield batch
    finally:
        if started:
            ray.shutdown()


ENGINES: dict[str, Engine] = {
    "thread": Engine("thread", "ThreadPoolExecutor", _thread_pool, {}),
    "sync": Engine("sync", "plain loop", _inline, {}),
    "process": Engine("process", "ProcessPoolExecutor", _process_pool, {}),
    "dask": Engine("dask", "distributed client.map/gather", _dask_cluster, {}),
    "ray": Engine("ray", "ray f.remote + ray.get", _ray_local, {}),
}


def available() -> list[str]:
    """Runners of `ENGINES` that are installed here."""
    installed = {info.name for info in baton.list_runners()}
    return [name for name in ENGINES if name in installed]
