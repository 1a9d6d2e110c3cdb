"""Ray for the tests, all on 127.0.0.1: a local Ray started in this process with
``ray.init``, and a cluster started as a separate ``ray start --head`` process, each
stopped afterwards with a check that none of its processes is left.

Ray is told to stay on the loopback interface, to send no usage statistics, and to
skip token authentication (the cluster is reachable from this machine only). Import
this module before Ray: Ray reads those settings when it is imported.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

# Read by Ray when it is imported, and by every Ray process started from here.
RAY_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # loopback addresses, not the host's
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
}
os.environ.update(RAY_ENV)

ray = pytest.importorskip("ray", reason="the ray tests need baton-ray: run `tox -e ray`")
pytest.importorskip("baton_ray", reason="the ray tests need baton-ray: run `tox -e ray`")

HERE = Path(__file__).resolve().parent
CPUS = 2
SLOT = {"slot": 1}  # a custom resource of known capacity, for the kit's resource tests
OBJECT_STORE = 300 * 2**20
START_SECONDS = 120


def import_path() -> str:
    """PYTHONPATH for Ray workers: they import the tests' modules by name."""
    paths = [str(HERE), *(p for p in sys.path if p and os.path.isdir(p))]
    return os.pathsep.join(dict.fromkeys(paths))


def runtime_env() -> dict[str, object]:
    return {"env_vars": {"PYTHONPATH": import_path()}}


def local_init_kwargs(temp_dir: str) -> dict[str, object]:
    """What the tests pass to ``ray.init`` for a local Ray keeping its files in `temp_dir`."""
    return {
        "_temp_dir": temp_dir,
        "num_cpus": CPUS,
        "resources": SLOT,
        "include_dashboard": False,
        "object_store_memory": OBJECT_STORE,
        "runtime_env": runtime_env(),
        "log_to_driver": False,
    }


def ray_processes() -> list[psutil.Process]:
    """Processes of a Ray started from this process (its children, recursively)."""
    me = psutil.Process()
    return [p for p in me.children(recursive=True) if _is_ray(p)]


def _is_ray(process: psutil.Process) -> bool:
    try:
        text = " ".join(process.cmdline()) + " " + process.name()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False
    return "ray" in text


@contextlib.contextmanager
def local_ray() -> Iterator[None]:
    """``ray.init`` of a local Ray for the block; afterwards, no Ray process is left."""
    if ray.is_initialized():
        ray.shutdown()
    temp_dir = tempfile.mkdtemp(prefix="bray-")  # short: Ray's socket paths live here
    ray.init(**local_init_kwargs(temp_dir))  # type: ignore[arg-type]
    try:
        yield
    finally:
        tree = ray_processes()
        ray.shutdown()
        _, alive = psutil.wait_procs(tree, timeout=30)
        for process in alive:
            process.kill()
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert not alive, f"processes of the local Ray left running: {alive}"


@dataclass
class Cluster:
    """A head node started with ``ray start``, and the session its processes share."""

    address: str
    session: int  # the session (and process group) id of every process it started
    temp_dir: str

    def processes(self) -> list[psutil.Process]:
        found = []
        for process in psutil.process_iter(["pid"]):
            try:
                if os.getsid(process.pid) == self.session:
                    found.append(process)
            except (ProcessLookupError, PermissionError):
                continue
        return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def ray_cluster() -> Iterator[Cluster]:
    """``ray start --head`` on 127.0.0.1 in a session of its own; on exit, every process
    of that session is stopped, and checked with psutil to be gone."""
    temp_dir = tempfile.mkdtemp(prefix="bray-")  # short: Ray's socket paths live here
    port = _free_port()
    env = {**os.environ, **RAY_ENV, "PYTHONPATH": import_path()}
    command = [
        str(Path(sys.executable).with_name("ray")),
        "start",
        "--head",
        f"--port={port}",
        "--node-ip-address=127.0.0.1",
        f"--num-cpus={CPUS}",
        "--include-dashboard=false",
        "--disable-usage-stats",
        f"--object-store-memory={OBJECT_STORE}",
        f"--temp-dir={temp_dir}",
    ]
    log = Path(temp_dir, "ray-start.log")
    with log.open("wb") as out:
        # `ray start` exits once the head node runs; its processes stay in its session.
        starter = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        cluster = Cluster(f"127.0.0.1:{port}", starter.pid, temp_dir)
        try:
            code = starter.wait(START_SECONDS)
            if code != 0:
                raise RuntimeError(f"ray start failed ({code}):\n{log.read_text()}")
            yield cluster
        finally:
            if starter.poll() is None:
                starter.kill()
            _stop(cluster)


def _stop(cluster: Cluster) -> None:
    tree = cluster.processes()
    # What `ray stop` does, for this cluster's processes only: SIGTERM, then SIGKILL for
    # those still there after a grace period (the GCS server takes its time).
    for sig, grace in ((signal.SIGTERM, 3), (signal.SIGKILL, 15)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(cluster.session, sig)
        _, alive = psutil.wait_procs(tree, timeout=grace)
        if not alive:
            break
    deadline = time.monotonic() + 15
    left = [p for p in cluster.processes() if _running(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = [p for p in cluster.processes() if _running(p)]
    assert not left, f"processes of the `ray start` cluster left running: {left}"
    shutil.rmtree(cluster.temp_dir, ignore_errors=True)


def _running(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
