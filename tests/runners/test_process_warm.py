"""The `process` runner's warm pools: workers kept between the flow runs that select
the runner by name (or are given an unstarted runner), and what a flow run's end
still stops."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import psutil
import pytest
from baton import State, flow, get_runner, task
from baton._runners.process import ProcessRunner

ENV = {**os.environ, "BATON_LOG_LEVEL": "WARNING"}


@task
def pid(_: int = 0) -> int:
    return os.getpid()


@task
def read_env(name: str) -> str | None:
    return os.environ.get(name)


@task
def cwd() -> str:
    return os.getcwd()


def _pids_on(runner: object, n: int = 1) -> set[int]:
    @flow(task_runner=runner)  # type: ignore[arg-type]
    def pids() -> list[int]:
        return pid.map(range(n)).result()

    return set(pids())


def _alive(pid_: int) -> bool:
    try:
        return psutil.Process(pid_).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_flow_runs_on_a_runner_chosen_by_name_reuse_its_workers() -> None:
    runner = get_runner("process", max_workers=1)
    first = _pids_on(runner)
    assert _pids_on(runner) == first
    assert _pids_on(ProcessRunner(max_workers=1)) == first  # an unstarted instance too
    assert all(_alive(p) for p in first)  # warm: still there between flow runs


def test_options_that_shape_the_workers_get_their_own_pool() -> None:
    plain = _pids_on(get_runner("process", max_workers=1))
    other = _pids_on(get_runner("process", max_workers=1, initializer=os.getpid))
    assert plain.isdisjoint(other)
    assert _pids_on(get_runner("process", max_workers=1, initializer=os.getpid)) == other


def test_a_runner_used_with_with_has_workers_of_its_own() -> None:
    warm = _pids_on(get_runner("process", max_workers=1))
    with ProcessRunner(max_workers=1) as own:
        mine = _pids_on(own)
    assert mine.isdisjoint(warm)
    _, alive = psutil.wait_procs([psutil.Process(p) for p in mine if _alive(p)], timeout=20)
    assert not [p for p in alive if _alive(p.pid)]  # stopped with the runner
    assert all(_alive(p) for p in warm)


def test_idle_workers_stop_after_the_idle_timeout() -> None:
    workers = _pids_on(get_runner("process", max_workers=1, idle_timeout=0.1))
    _, alive = psutil.wait_procs([psutil.Process(p) for p in workers if _alive(p)], timeout=30)
    assert not [p for p in alive if _alive(p.pid)]
    # The next flow run starts new ones.
    assert _pids_on(get_runner("process", max_workers=1, idle_timeout=0.1)).isdisjoint(workers)


def test_invalid_idle_timeout_is_refused() -> None:
    from baton import InvalidOptionsError

    with pytest.raises(InvalidOptionsError, match="idle_timeout"):
        ProcessRunner(idle_timeout=-1)


def test_warm_workers_see_the_environment_of_each_flow_run(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    runner = get_runner("process", max_workers=1)

    @flow(task_runner=runner)
    def look() -> tuple[str | None, str]:
        return read_env.submit("BATON_WARM_TEST").result(), cwd.submit().result()

    monkeypatch.delenv("BATON_WARM_TEST", raising=False)
    assert look()[0] is None
    monkeypatch.setenv("BATON_WARM_TEST", "set later")
    monkeypatch.chdir(tmp_path)
    assert look() == ("set later", str(tmp_path))
    monkeypatch.delenv("BATON_WARM_TEST")
    assert look()[0] is None


def test_an_interrupted_flow_run_stops_its_runs_and_the_pool_carries_on(
    tmp_path: Path,
) -> None:
    runner = get_runner("process", max_workers=2)
    started = tmp_path / "started"

    @task
    def hang(path: str) -> None:
        import time

        Path(path).write_text(str(os.getpid()))
        while True:
            time.sleep(0.05)

    futures = []

    @flow(task_runner=runner)
    def interrupted() -> None:
        futures.append(hang.submit(str(started)))
        while not started.exists() or not started.read_text():
            threading.Event().wait(0.01)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        interrupted()
    state = futures[0].state
    assert isinstance(state, State) and state.is_crashed()
    victim = int(started.read_text())
    _, alive = psutil.wait_procs([psutil.Process(victim)] if _alive(victim) else [], timeout=20)
    assert not [p for p in alive if _alive(p.pid)]
    assert victim not in _pids_on(runner, 2)  # replaced; the others stay warm


@task
def wait_for_release(folder: str) -> int:
    import time

    Path(folder, "y-started").write_text(str(os.getpid()))
    while not Path(folder, "release").exists():
        time.sleep(0.01)
    return os.getpid()


@task
def hang_here(folder: str) -> None:
    import time

    Path(folder, "x-started").write_text(str(os.getpid()))
    while True:
        time.sleep(0.05)


def _wait_for(path: Path) -> None:
    deadline = threading.Event()
    for _ in range(6000):
        if path.exists() and path.read_text():
            return
        deadline.wait(0.01)
    raise AssertionError(f"{path} never appeared")


def test_an_interrupted_flow_run_does_not_stop_another_sharing_the_pool(
    tmp_path: Path,
) -> None:
    runner = get_runner("process", max_workers=2)
    folder = str(tmp_path)

    @flow(task_runner=runner)
    def other() -> int:
        return wait_for_release.submit(folder).result()

    results: list[int] = []
    thread = threading.Thread(target=lambda: results.append(other()))
    thread.start()
    try:
        _wait_for(tmp_path / "y-started")
        futures = []

        @flow(task_runner=runner)
        def interrupted() -> None:
            futures.append(hang_here.submit(folder))
            _wait_for(tmp_path / "x-started")
            raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            interrupted()
        assert futures[0].state.is_crashed()
    finally:
        (tmp_path / "release").write_text("go")
        thread.join(60)
    survivor = int((tmp_path / "y-started").read_text())
    assert results == [survivor]  # its run finished on the worker it started on
    victim = int((tmp_path / "x-started").read_text())
    assert victim != survivor
    _, alive = psutil.wait_procs([psutil.Process(victim)] if _alive(victim) else [], timeout=20)
    assert not [p for p in alive if _alive(p.pid)]


@task(timeout_seconds=0.5)
def spin(folder: str) -> None:
    Path(folder, "x-started").write_text(str(os.getpid()))
    while True:
        pass


def test_a_timeout_on_warm_workers_replaces_only_that_worker(tmp_path: Path) -> None:
    runner = get_runner("process", max_workers=2)
    folder = str(tmp_path)

    @flow(task_runner=runner)
    def timed() -> tuple[bool, int]:
        keeper = wait_for_release.submit(folder)
        _wait_for(tmp_path / "y-started")
        spun = spin.submit(folder)
        spun.wait()
        (tmp_path / "release").write_text("go")
        return spun.state.name == "TimedOut", keeper.result()

    timed_out, keeper = timed()
    assert timed_out
    victim = int((tmp_path / "x-started").read_text())
    _, alive = psutil.wait_procs([psutil.Process(victim)] if _alive(victim) else [], timeout=20)
    assert not [p for p in alive if _alive(p.pid)]
    assert keeper in _pids_on(runner, 2)  # the other worker stays warm, and serves again


NO_WORKER_LEFT = """
import os, sys
from baton import flow, task

@task
def pid(_):
    return os.getpid()

@flow(task_runner="process")
def pids():
    return pid.map(range(8)).result()

for _ in range(3):
    found = set(pids())
print(" ".join(map(str, sorted(found))), flush=True)
"""


def test_no_worker_is_left_after_the_interpreter_exits(tmp_path: Path) -> None:
    script = tmp_path / "warm_exit.py"
    script.write_text(textwrap.dedent(NO_WORKER_LEFT))
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=ENV
    )
    assert done.returncode == 0, done.stderr
    workers = [int(p) for p in done.stdout.split()]
    assert workers
    procs = [psutil.Process(p) for p in workers if _alive(p)]
    _, alive = psutil.wait_procs(procs, timeout=10)
    assert not [p for p in alive if _alive(p.pid)]
