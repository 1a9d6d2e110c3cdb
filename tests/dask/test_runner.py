"""The runner as users meet it: selected by name or URL, its options and their errors, the
clusters it starts or connects to, and what it leaves behind."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import psutil
import pytest
from baton import (
    BatonError,
    InvalidOptionsError,
    State,
    StateType,
    flow,
    get_runner,
    task,
)
from baton_dask import DaskTaskRunner
from distributed import Client, LocalCluster, Security


@task
def inc(x: int) -> int:
    return x + 1


@task
def pid(_: int) -> int:
    return os.getpid()


@task
def wait_for(path: str) -> str:
    import time

    while not Path(path).exists():
        time.sleep(0.01)
    return "released"


def test_registered_through_its_entry_point_and_imported_only_when_selected() -> None:
    code = """
import json, sys
import baton
info = {r.name: r for r in baton.list_runners()}["dask"]
listed = (info.distribution, info.url_schemes, "baton_dask._runner" in sys.modules)
import baton_dask
light = "dask" in sys.modules or "distributed" in sys.modules
runner = baton.get_runner("dask://127.0.0.1:8786")
print(json.dumps([*listed, light, type(runner).__name__, sorted(info.capabilities)]))
"""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    distribution, schemes, imported, light, name, capabilities = json.loads(done.stdout)
    assert (distribution, schemes) == ("baton-dask", ["dask", "dask+tls"])
    assert not imported, "listing runners does not import the runner's module"
    assert not light, "importing baton_dask does not import Dask"
    assert name == "DaskTaskRunner"
    assert capabilities == [
        "async",
        "connect",
        "crash-detection",
        "limits",
        "native-dependencies",
        "nested",
        "priorities",
        "processes",
        "resources",
    ]


def test_urls_select_a_running_scheduler() -> None:
    assert get_runner("dask://127.0.0.1:8786").address == "tcp://127.0.0.1:8786"  # type: ignore[attr-defined]
    assert get_runner("DASK+TLS://scheduler.example:8786").address == (  # type: ignore[attr-defined]
        "tls://scheduler.example:8786"
    )
    for bad in ("dask://", "dask://127.0.0.1", "dask://h:1/path", "dask://h:1?x=1", "dask://u@h:1"):
        with pytest.raises(InvalidOptionsError, match=r"It takes the form dask://HOST:PORT"):
            get_runner(bad)


def test_options_by_name_and_their_errors() -> None:
    runner = get_runner("dask", address="127.0.0.1:8786")
    assert isinstance(runner, DaskTaskRunner) and runner.address == "tcp://127.0.0.1:8786"
    with pytest.raises(TypeError, match="Its options: address, cluster_class, cluster_kwargs"):
        get_runner("dask", workers=2)

    cases = {
        "address: unknown scheme 'http'": {"address": "http://h:1"},
        "address: must name a host and a port": {"address": "tcp://somewhere"},
        "address: must be a scheduler address": {"address": ""},
        "address connects to a running scheduler, while cluster_kwargs": {
            "address": "h:1",
            "cluster_kwargs": {"n_workers": 2},
        },
        "cluster_class: cannot import 'no_such_module.Cluster'": {
            "cluster_class": "no_such_module.Cluster"
        },
        "cluster_class: must be a cluster class": {"cluster_class": 42},
        "cluster_kwargs: Input should be a valid dictionary": {"cluster_kwargs": [1]},
        "pass the scheduler's address as address=": {"client_kwargs": {"address": "h:1"}},
        "performance_report_path: must be the path": {"performance_report_path": ""},
    }
    for message, options in cases.items():
        with pytest.raises(
            InvalidOptionsError, match="Invalid options for task runner 'dask'"
        ) as e:
            DaskTaskRunner(**options)  # type: ignore[arg-type]
        assert message in str(e.value), (message, str(e.value))


def test_duplicate_and_repr() -> None:
    runner = DaskTaskRunner("tcp://127.0.0.1:8786", client_kwargs={"name": "x"})
    copy = runner.duplicate()
    assert copy is not runner and copy.address == runner.address
    assert repr(copy) == "<DaskTaskRunner address='tcp://127.0.0.1:8786' new>"
    assert repr(DaskTaskRunner()) == "<DaskTaskRunner cluster=LocalCluster new>"


def test_a_cluster_it_starts_it_closes(tmp_path: Path) -> None:
    runner = DaskTaskRunner(
        cluster_class="distributed.LocalCluster",
        cluster_kwargs={
            "n_workers": 1,
            "threads_per_worker": 1,
            "processes": True,
            "host": "127.0.0.1",
            "dashboard_address": ":0",
        },
        adapt_kwargs={"minimum": 1, "maximum": 2},
        client_kwargs={"name": "baton-test"},
    )

    @flow(task_runner=runner)
    def on_its_own_cluster() -> list[int]:
        return pid.map(range(4)).result()

    with runner:
        assert "-baton-test-" in runner.client.id, "client_kwargs reach the client"
        workers = [psutil.Process(p) for p in runner.client.run(os.getpid).values()]
        pids = on_its_own_cluster()
        assert set(pids) <= {w.pid for w in workers}
    _, alive = psutil.wait_procs(workers, timeout=30)
    assert not alive, "the workers of the cluster it started are gone"


def test_a_cluster_it_connects_to_it_leaves_running(cluster: LocalCluster) -> None:
    runner = DaskTaskRunner(cluster.scheduler_address)
    assert flow(task_runner=runner)(lambda: inc.submit(1).result())() == 2
    with Client(cluster.scheduler_address, set_as_default=False) as client:
        assert client.submit(sum, [1, 2]).result() == 3


def test_an_unreachable_scheduler_is_a_clear_error() -> None:
    runner = DaskTaskRunner("tcp://127.0.0.1:9", client_kwargs={"timeout": "1s"})
    with pytest.raises(BatonError, match=r"could not connect to the Dask scheduler at tcp://127"):
        runner.start()


def test_shutdown_without_waiting_cancels_what_is_in_flight(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    runner = DaskTaskRunner(cluster.scheduler_address).start()
    release = tmp_path / "release"
    states: list[State] = []

    @flow(task_runner=runner)
    def interrupted() -> None:
        future = wait_for.submit(str(release))
        runner.shutdown(wait=False)
        future.wait()
        states.append(future.state)

    try:
        interrupted()
    finally:
        release.touch()
    [state] = states
    assert state.type is StateType.CANCELLED
    assert "task runner 'dask' shut down before it finished" in str(state.message)


def test_performance_report_needs_bokeh(cluster: LocalCluster, tmp_path: Path) -> None:
    report = tmp_path / "report.html"
    runner = DaskTaskRunner(cluster.scheduler_address, performance_report_path=report)
    try:
        import bokeh  # noqa: F401
    except ImportError:
        with pytest.raises(InvalidOptionsError, match=r"needs the bokeh package"):
            runner.start()
        return
    with runner:
        flow(task_runner=runner)(lambda: inc.map(range(3)).result())()
    assert "Dask Performance Report" in report.read_text()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl to make a certificate")
def test_tls_security_passes_through(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
    )
    pem = {"tls_ca_file": str(cert), "require_encryption": True}
    security = Security(
        **pem,
        tls_client_cert=str(cert),
        tls_client_key=str(key),
        tls_scheduler_cert=str(cert),
        tls_scheduler_key=str(key),
        tls_worker_cert=str(cert),
        tls_worker_key=str(key),
    )
    with LocalCluster(
        n_workers=1,
        threads_per_worker=1,
        processes=True,
        protocol="tls://",
        host="127.0.0.1",
        security=security,
        dashboard_address=":0",
    ) as tls_cluster:
        address = tls_cluster.scheduler_address
        assert address.startswith("tls://")
        runner = DaskTaskRunner(address, client_kwargs={"security": security})
        assert flow(task_runner=runner)(lambda: inc.map([1, 2]).result())() == [2, 3]
        plain = DaskTaskRunner(address, client_kwargs={"timeout": "2s"})
        with pytest.raises(BatonError, match="security for TLS"):
            plain.start()


def test_a_flow_run_owns_a_runner_it_was_given_unstarted(cluster: LocalCluster) -> None:
    runner = DaskTaskRunner(cluster.scheduler_address)
    seen: list[bool] = []

    @flow(task_runner=runner)
    def check() -> int:
        seen.append(threading.current_thread() is threading.main_thread())
        return inc.submit(41).result()

    assert check() == 42 and check() == 42
    assert not runner.started and not runner.closed
