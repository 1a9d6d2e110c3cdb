"""The example third-party plugin in examples/plugins/baton-pool: the `pool` runner, on a
pool of worker processes, written only on the public API (`baton`, `baton.runners`).

Run from its source tree (tests/packaging/test_wheels.py installs its wheel and runs
``baton conformance pool``): the conformance kit, then what the runner promises on
top of it, each shown directly.
"""

from __future__ import annotations

import ast
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from baton import (
    Capability,
    CrashedRun,
    FlowRunFailed,
    InvalidOptionsError,
    State,
    StateType,
    TaskRunner,
    flow,
    get_runner,
    list_runners,
    task,
)
from baton.runners import current_runner
from baton.testing import RunnerConformance

if TYPE_CHECKING:
    from conftest import Site

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "plugins" / "baton-pool"
SOURCE = str(EXAMPLE / "src")


@pytest.fixture(scope="module", autouse=True)
def example_on_sys_path() -> Iterator[None]:
    """The example's source importable here, and in the workers (they get sys.path)."""
    path = list(sys.path)
    sys.path.append(SOURCE)
    yield
    sys.path[:] = path
    for name in [n for n in sys.modules if n.partition(".")[0] == "baton_pool"]:
        del sys.modules[name]


def pool_runner(max_workers: int = 2) -> TaskRunner:
    from baton_pool.runner import PoolRunner

    return PoolRunner(max_workers=max_workers)


class TestPoolRunner(RunnerConformance):
    conformance_level = 1

    @pytest.fixture
    def runner(self) -> TaskRunner:
        return pool_runner()


# -- tasks (importable by reference in the workers) ------------------------------------


@task(timeout_seconds=1)
def stuck_in_c(pid_file: str) -> str:
    Path(pid_file).write_text(str(os.getpid()))
    time.sleep(60)  # one C call: nothing in the process can interrupt it
    return "slept"


@task(retries=1)
def exits(log: str) -> None:
    with open(log, "a") as file:
        file.write(f"{os.getpid()}\n")
    os._exit(3)


@task
def fails() -> None:
    raise ValueError("nobody reads this")


@task
def leaves_a_failure() -> str:
    fails.submit()  # fire and forget
    return "returned"


@task
def waits_for(started: str, release: str) -> str:
    Path(started).write_text(str(os.getpid()))
    deadline = time.monotonic() + 60
    while not os.path.exists(release):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{release} never appeared")
        time.sleep(0.01)
    return "released"


@task
def inc(x: int) -> int:
    return x + 1


@task
def touch(path: str) -> None:
    Path(path).touch()


def wait_for_file(path: Path) -> None:
    deadline = time.monotonic() + 60
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# -- what the runner does beyond the kit -----------------------------------------------


@pytest.mark.timeout(30)
def test_a_sync_task_stuck_in_a_c_call_times_out_and_its_worker_is_killed(
    tmp_path: Path,
) -> None:
    pid_file = tmp_path / "pid"

    @flow(task_runner=pool_runner())
    def stuck() -> tuple[State]:
        future = stuck_in_c.submit(str(pid_file))
        future.wait()
        return (future.state,)  # a State returned alone would be the flow's own

    (state,) = stuck()
    # Left to run, the call would complete after 60 s: TimedOut means it was stopped.
    assert state.type is StateType.FAILED and state.name == "TimedOut", state
    pid = int(pid_file.read_text())
    assert f"its worker process (pid {pid}) was killed" in str(state.message)
    assert pid != os.getpid() and not alive(pid)


def test_a_worker_that_exits_is_retried_then_the_run_crashes_naming_the_exit_code(
    tmp_path: Path,
) -> None:
    log = tmp_path / "attempts"

    @flow(task_runner=pool_runner())
    def crashing() -> tuple[State, int]:
        future = exits.submit(str(log))
        future.wait()
        return future.state, inc.submit(1).result()

    state, after = crashing()
    assert state.type is StateType.CRASHED and isinstance(state.error, CrashedRun), state
    assert "exited with code 3 while running it" in str(state.message)
    first, second = (int(pid) for pid in log.read_text().split())
    assert first != second, "the second attempt ran on a new worker"
    assert f"(pid {second})" in str(state.message)
    assert after == 2, "the pool goes on after a worker died"


def test_a_failing_subtask_nobody_read_fails_the_flow_naming_it() -> None:
    seen: list[State] = []

    @flow(task_runner=pool_runner())
    def fire_and_forget() -> str:
        parent = leaves_a_failure.submit()
        result = parent.result()
        seen.append(parent.state)
        return result

    state = fire_and_forget(return_state=True)
    assert seen[0].is_completed(), "the task that left the failure completes"
    assert state.is_failed() and isinstance(state.error, FlowRunFailed), state
    assert "'fails-" in str(state.message) and "nobody reads this" in str(state.message)


def test_cancel_drops_a_run_waiting_for_a_worker(tmp_path: Path) -> None:
    started, release, ran = tmp_path / "started", tmp_path / "release", tmp_path / "ran"

    @flow(task_runner=pool_runner(max_workers=1))
    def cancelling() -> tuple[bool, StateType, str]:
        busy = waits_for.submit(str(started), str(release))
        wait_for_file(started)  # the only worker is busy: the next run waits in the pool
        queued = touch.submit(str(ran))
        cancelled = queued.cancel()
        release.touch()
        return cancelled, queued.state.type, busy.result()

    assert cancelling() == (True, StateType.CANCELLED, "released")
    assert not ran.exists(), "a cancelled run never runs"


def test_shutdown_without_waiting_kills_the_workers(tmp_path: Path) -> None:
    started, never, ran = tmp_path / "started", tmp_path / "never", tmp_path / "ran"

    @flow(task_runner=pool_runner(max_workers=1))
    def stopping() -> tuple[State, State]:
        running = waits_for.submit(str(started), str(never))
        queued = touch.submit(str(ran))
        wait_for_file(started)
        runner = current_runner()
        assert runner is not None
        runner.shutdown(wait=False)
        running.wait()
        queued.wait()
        return running.state, queued.state

    running, queued = stopping()
    pid = int(started.read_text())
    assert running.type is StateType.CRASHED, running
    assert (
        "task runner 'pool' shut down without waiting, and its worker process "
        f"(pid {pid}) was killed"
    ) in str(running.message)
    assert not alive(pid)
    assert queued.type is StateType.CANCELLED and not ran.exists(), queued


def test_options_are_checked() -> None:
    with pytest.raises(InvalidOptionsError, match="max_workers: must be a whole number >= 1"):
        pool_runner(max_workers=0)
    from baton_pool.runner import PoolRunner

    assert PoolRunner().max_workers >= 2


# -- as a plugin -----------------------------------------------------------------------


def test_discovered_by_its_entry_point_and_selected_by_name(site: Site) -> None:
    site.dist("baton-pool", {"pool": "baton_pool.plugin"}, version="0.1.0")
    for name in [n for n in sys.modules if n.partition(".")[0] == "baton_pool"]:
        del sys.modules[name]
    info = {r.name: r for r in list_runners()}["pool"]
    assert (info.plugin, info.distribution) == ("pool", "baton-pool")
    assert "baton_pool.runner" not in sys.modules  # registered lazily
    assert set(info.capabilities) == {
        str(c)
        for c in (
            Capability.PROCESSES,
            Capability.NESTED,
            Capability.ASYNC,
            Capability.HARD_TIMEOUTS,
            Capability.CRASH_DETECTION,
        )
    }

    @flow(task_runner="pool")
    def by_name(xs: list[int]) -> list[int]:
        return inc.map(xs).result()

    assert by_name([1, 2, 3]) == [2, 3, 4]
    assert type(get_runner("pool")).__module__ == "baton_pool.runner"


def test_written_only_against_the_public_api() -> None:
    for path in (EXAMPLE / "src").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else []
            )
            for name in names:
                assert not name.startswith("baton._"), f"{path}: {name}"
    assert (EXAMPLE / "src" / "baton_pool" / "py.typed").exists()
    pyproject = (EXAMPLE / "pyproject.toml").read_text()
    assert '[project.entry-points."baton.plugins"]' in pyproject
    assert 'pool = "baton_pool.plugin"' in pyproject
