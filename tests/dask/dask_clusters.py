"""Dask clusters for the tests of this folder and of tests/reliability, all on 127.0.0.1:
a `LocalCluster` of worker processes, and one started as separate ``dask scheduler`` /
``dask worker`` processes.

Each test module that uses one gets its own, started once for the module. Worker
deaths are not retried by Dask here (``allowed-failures`` is 0), so that a task
that kills its worker kills one worker, and Baton's own retries are what is seen.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import dask
import psutil
from distributed import Client, LocalCluster

NO_WORKER_RETRIES = {"distributed.scheduler.allowed-failures": 0}
SLOT = {"slot": 1}


@contextmanager
def local_cluster(
    n_workers: int = 2, threads_per_worker: int = 1, slot_worker: bool = False
) -> Iterator[LocalCluster]:
    """A LocalCluster of worker processes (with nannies, which restart a dead worker).

    With `slot_worker`, one more worker has the resource ``slot=1``: the only one in the
    cluster, for the tests of resources and priorities (SLOT)."""
    with dask.config.set(NO_WORKER_RETRIES):
        cluster = LocalCluster(
            n_workers=n_workers,
            threads_per_worker=threads_per_worker,
            processes=True,
            host="127.0.0.1",
            dashboard_address=":0",
            worker_dashboard_address=None,
        )
    try:
        if slot_worker:
            plain = cluster.new_spec
            cluster.new_spec = {**plain, "options": {**plain["options"], "resources": SLOT}}
            cluster.scale(n_workers + 1)
            cluster.new_spec = plain
            with Client(cluster, set_as_default=False) as client:
                client.wait_for_workers(n_workers + 1, timeout=60)
        yield cluster
    finally:
        cluster.close()


@dataclass
class ProcessCluster:
    """A scheduler and workers started as `dask` commands, with their process trees."""

    address: str
    scheduler: subprocess.Popen[bytes]
    workers: subprocess.Popen[bytes]
    pid: int  # the scheduler's

    def processes(self) -> list[psutil.Process]:
        found: list[psutil.Process] = []
        for popen in (self.scheduler, self.workers):
            try:
                parent = psutil.Process(popen.pid)
                found.extend([parent, *parent.children(recursive=True)])
            except psutil.NoSuchProcess:
                pass
        return found


def _wait_for_file(path: Path, process: subprocess.Popen[bytes], what: str) -> dict[str, str]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode} before it was ready")
        if path.exists():
            try:
                info: dict[str, str] = json.loads(path.read_text())
                return info
            except ValueError:
                pass  # being written
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not start within 60 s")


@contextmanager
def process_cluster(directory: Path, n_workers: int = 2) -> Iterator[ProcessCluster]:
    """``dask scheduler`` and ``dask worker`` (with nannies) as subprocesses on 127.0.0.1;
    on exit, stopped, and checked with psutil that none of their processes is left."""
    env = {
        **os.environ,
        "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "0",
        "PYTHONUNBUFFERED": "1",
        # As a deployment installs the flow's code where the cluster runs: Dask unpickles
        # task graphs on the scheduler too, so both import the test modules' tasks.
        "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
    }
    scheduler_file = directory / "scheduler.json"
    dask_command = [sys.executable, "-m", "dask"]
    logs = ExitStack()
    scheduler = subprocess.Popen(
        [
            *dask_command,
            "scheduler",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--no-dashboard",
            "--scheduler-file",
            str(scheduler_file),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=logs.enter_context((directory / "scheduler.log").open("wb")),
    )
    workers: subprocess.Popen[bytes] | None = None
    started: ProcessCluster | None = None
    try:
        info = _wait_for_file(scheduler_file, scheduler, "dask scheduler")
        address = info["address"]
        workers = subprocess.Popen(
            [
                *dask_command,
                "worker",
                address,
                "--nworkers",
                str(n_workers),
                "--nthreads",
                "1",
                "--host",
                "127.0.0.1",
                "--no-dashboard",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=logs.enter_context((directory / "workers.log").open("wb")),
        )
        with Client(address, set_as_default=False, timeout=60) as client:
            client.wait_for_workers(n_workers, timeout=60)
        started = ProcessCluster(address, scheduler, workers, scheduler.pid)
        yield started
    finally:
        tree = started.processes() if started is not None else []
        for popen in (workers, scheduler):
            if popen is not None and popen.poll() is None:
                popen.send_signal(signal.SIGTERM)
        for popen in (workers, scheduler):
            if popen is not None:
                try:
                    popen.wait(30)
                except subprocess.TimeoutExpired:
                    popen.kill()
                    popen.wait()
        logs.close()
        _, alive = psutil.wait_procs(tree, timeout=30)
        for process in alive:
            process.kill()
        assert not alive, f"processes of the dask cluster left running: {alive}"
