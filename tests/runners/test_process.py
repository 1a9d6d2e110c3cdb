"""The `process` runner, with real worker processes.

Tests that leave the workers alone share one started runner (module scope); tests
that kill workers (timeouts, crashes, shutdown) build their own.
"""

from __future__ import annotations

import asyncio
import ctypes
import importlib.util
import os
import pickle
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from baton import (
    CrashedRun,
    InvalidOptionsError,
    State,
    StateType,
    TaskTimeoutError,
    flow,
    get_runner,
    task,
    unmapped,
    wait,
)
from baton._runners.process import ProcessRunner, RemoteTaskError, WorkerLoadError
from baton.runners import RemoteTraceback

ENV = {**os.environ, "BATON_LOG_LEVEL": "WARNING"}


@pytest.fixture(scope="module")
def runner() -> Iterator[ProcessRunner]:
    shared = ProcessRunner(max_workers=2).start()
    yield shared
    shared.shutdown()


@pytest.fixture
def own_runner() -> Iterator[ProcessRunner]:
    """A runner for a test that kills workers; no worker may outlive it."""
    own = ProcessRunner(max_workers=2).start()
    yield own
    pids = _worker_pids(own)
    own.shutdown()
    assert not [p for p in pids if psutil.pid_exists(p) and _alive(p)]


def _worker_pids(runner: ProcessRunner) -> list[int]:
    pool = runner._pool
    return [w.pid for w in pool._workers] if pool is not None else []


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def run_in(runner: ProcessRunner, fn: Any, *args: Any) -> Any:
    """Call `fn(*args)` as a flow on `runner`, returning its final state."""
    return flow(task_runner=runner)(fn)(*args, return_state=True)


def final_state(runner: ProcessRunner, fn: Any, *args: Any) -> State:
    """Submit `fn(*args)` in a flow on `runner` and return the run's final state."""

    def body() -> tuple[State]:
        future = fn.submit(*args)
        future.wait()
        return (future.state,)  # a flow returning a State would take it as its own

    state: State = run_in(runner, body).result()[0]
    return state


def wait_for_file(path: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear")
        time.sleep(0.01)


# -- tasks at module level travel by reference (the worker imports this module) ----


@task
def square(x: int) -> int:
    return x * x


@task
def worker_pid(_: object = None) -> int:
    return os.getpid()


@task
def add(x: int, y: int) -> int:
    return x + y


@task
def wait_for_both(directory: str, name: str) -> int:
    """Two runs that each finish only once the other has started: proof they run at once."""
    Path(directory, name).touch()
    other = Path(directory, "b" if name == "a" else "a")
    wait_for_file(other, timeout=20)
    return os.getpid()


@task
async def async_double(x: int) -> int:
    await asyncio.sleep(0)
    return 2 * x


@task
def echo(value: Any) -> Any:
    return value


def count_words(text: str) -> int:
    return len(text.split())


def extract_emails(text: str) -> list[str]:
    return re.findall(r"[\w.+-]+@[\w-]+\.[\w.-]+", text)


@task
def analyze_texts(texts: list[str]) -> dict[str, list[Any]]:
    futures = {op.__name__: task(op).map(texts) for op in [count_words, extract_emails]}
    wait([f for futs in futures.values() for f in futs])
    return {name: [f.result() for f in futs] for name, futs in futures.items()}


# -- choosing and configuring ----------------------------------------------------------


def test_registered_by_name_with_its_capabilities() -> None:
    made = get_runner("process", max_workers=3)
    assert isinstance(made, ProcessRunner)
    assert repr(made) == "<ProcessRunner max_workers=3 new>"
    assert {str(c) for c in ProcessRunner.capabilities} == {
        "processes",
        "nested",
        "async",
        "hard-timeouts",
        "crash-detection",
        "priorities",
        "resources",
        "limits",
    }


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"max_workers": 0}, "max_workers"),
        ({"max_workers": "2"}, "max_workers"),
        ({"initializer": 5}, "initializer"),
        ({"initargs": 5}, "initargs"),
    ],
)
def test_bad_options_are_named(options: dict[str, Any], named: str) -> None:
    with pytest.raises(InvalidOptionsError, match=rf"'process':\n  {named}: must be"):
        ProcessRunner(**options)


def test_unpicklable_initializer_fails_at_start() -> None:
    lock = threading.Lock()
    with pytest.raises(InvalidOptionsError, match="initializer, initargs: cannot be pickled"):
        ProcessRunner(initializer=print, initargs=(lock,)).start()


def test_max_workers_comes_from_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATON_PROCESS_MAX_WORKERS", "3")
    with ProcessRunner() as configured:
        assert repr(configured) == "<ProcessRunner max_workers=3 started>"
    monkeypatch.delenv("BATON_PROCESS_MAX_WORKERS")
    with ProcessRunner() as default:
        assert repr(default) == f"<ProcessRunner max_workers={os.cpu_count()} started>"


# -- running ---------------------------------------------------------------------------


def test_map_and_submit_run_in_other_processes(runner: ProcessRunner) -> None:
    def body() -> tuple[list[int], int, set[int]]:
        squares = square.map(range(200)).result()
        total = add.submit(square.submit(3), y=4).result()  # a future as an argument
        pids = set(worker_pid.map(range(20)).result())
        return squares, total, pids

    state = run_in(runner, body)
    squares, total, pids = state.result()
    assert squares == [i * i for i in range(200)]
    assert total == 13
    assert os.getpid() not in pids


def test_a_wake_up_during_the_drain_of_the_wake_up_pipe_is_not_lost(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A run handed in while the dispatcher empties its wake-up pipe must still wake it
    next time: the flag that spares submitters a write may not stay set with no byte."""
    real_read = os.read
    with ProcessRunner(max_workers=1) as one:
        pool = one._pool
        assert pool is not None
        interleaved: list[bool] = []

        def read(fd: int, size: int) -> bytes:
            if fd == pool._wake_r and not interleaved:
                interleaved.append(True)
                pool._wake()  # another submitter, right now
            return real_read(fd, size)

        monkeypatch.setattr(os, "read", read)
        idle = threading.Event()
        real_select = pool._selector.select

        def select(timeout: float | None = None) -> Any:
            if timeout is None:
                idle.set()  # about to block until something wakes it
            return real_select(timeout)

        monkeypatch.setattr(pool._selector, "select", select)

        def body() -> list[int]:
            idle.clear()
            first = square.submit(2).result(timeout=30)
            assert idle.wait(30)  # the dispatcher has nothing left to do
            return [first, square.submit(3).result(timeout=30)]  # TimeoutError if lost

        assert run_in(one, body).result() == [4, 9]
        assert interleaved


def test_two_workers_run_at_the_same_time(runner: ProcessRunner, tmp_path: Path) -> None:
    def body() -> list[int]:
        return wait_for_both.map(unmapped(str(tmp_path)), ["a", "b"]).result()

    pids = run_in(runner, body).result()
    assert len(set(pids)) == 2


def test_wait_for_and_upstream_results(runner: ProcessRunner, tmp_path: Path) -> None:
    marker = tmp_path / "first"

    @task
    def first() -> str:
        marker.write_text("done")
        return "first"

    @task
    def second() -> bool:
        return marker.exists()

    @task
    def join(parts: list[Any]) -> str:
        return "+".join(str(p) for p in parts)

    def body() -> tuple[bool, str]:
        a = first.submit()
        b = second.submit(wait_for=[a])
        return b.result(), join.submit([a, {"k": square.submit(2)}]).result()

    ordered, joined = run_in(runner, body).result()
    assert ordered is True
    assert joined == "first+{'k': 4}"


def test_closures_lambdas_and_exec_defined_tasks(runner: ProcessRunner) -> None:
    offset = 10

    @task
    def shifted(x: int) -> int:
        return x + offset

    namespace: dict[str, Any] = {"__name__": "notebook_cell"}
    exec(
        textwrap.dedent(
            """
            from baton import task

            class Box:
                def __init__(self, value):
                    self.value = value

            @task
            def boxed(x, fn):
                return Box(fn(x))
            """
        ),
        namespace,
    )
    boxed = namespace["boxed"]

    def body() -> tuple[list[int], Any]:
        return shifted.map([1, 2]).result(), boxed.submit(3, lambda v: v * 7).result()

    shifted_values, box = run_in(runner, body).result()
    assert shifted_values == [11, 12]
    assert type(box) is namespace["Box"]  # the class comes back as itself
    assert box.value == 21


def test_async_tasks(runner: ProcessRunner) -> None:
    def body() -> list[int]:
        return async_double.map(range(5)).result()

    assert run_in(runner, body).result() == [0, 2, 4, 6, 8]


def test_async_flow_awaits_process_futures(runner: ProcessRunner) -> None:
    @flow(task_runner=runner)
    async def body() -> list[int]:
        return [await async_double.submit(1), await square.submit(3)]

    assert asyncio.run(body()) == [2, 9]


def test_nested_map_inside_a_process_task(runner: ProcessRunner) -> None:
    """The seed's nested mapped tasks, with the outer task submitted to a worker."""
    texts = [
        "Just visited #Paris! Contact me at visitor@example.com #travel #vacation",
        "Working on my new #project. Reach out at developer@example.com if interested!",
        "Happy to announce our company event #celebration #milestone email: events@company.org",
    ]

    def body() -> dict[str, list[Any]]:
        return analyze_texts.submit(texts).result()

    assert run_in(runner, body).result() == {
        "count_words": [9, 11, 10],
        "extract_emails": [
            ["visitor@example.com"],
            ["developer@example.com"],
            ["events@company.org"],
        ],
    }


def test_large_arguments_and_results(runner: ProcessRunner) -> None:
    blob = os.urandom(3_000_000)

    def body() -> list[bytes]:
        return echo.map([blob, blob[::-1]]).result()

    assert run_in(runner, body).result() == [blob, blob[::-1]]


def _set_env(name: str, value: str) -> None:
    os.environ[name] = value


def test_initializer_runs_in_each_worker() -> None:
    with ProcessRunner(max_workers=1, initializer=_set_env, initargs=("X", "1")) as r:

        @task
        def read() -> str | None:
            return os.environ.get("X")

        assert run_in(r, lambda: read.submit().result()).result() == "1"


def _failing_initializer() -> None:
    raise RuntimeError("no database")


def test_failing_initializer_crashes_runs_with_its_traceback() -> None:
    with ProcessRunner(max_workers=1, initializer=_failing_initializer) as r:
        crashed = final_state(r, square, 2)
    assert crashed.type is StateType.CRASHED
    assert "initializer" in crashed.message
    assert "RuntimeError: no database" in crashed.message


# -- scripts ---------------------------------------------------------------------------

SCRIPT = """
import os
from dataclasses import dataclass
from baton import flow, task

@dataclass
class Point:
    x: int

@task
def scale(p, k):
    return Point(p.x * k)

@flow(task_runner="process")
def main():
    points = scale.map([Point(1), Point(2)], 3).result()
    assert all(isinstance(p, Point) for p in points), points
    return [p.x for p in points]

"""


@pytest.mark.parametrize("guarded", [True, False], ids=["main-guard", "no-guard"])
def test_script_with_and_without_main_guard(tmp_path: Path, guarded: bool) -> None:
    call = 'if __name__ == "__main__":\n    print(main())\n' if guarded else "print(main())\n"
    script = tmp_path / "flow_script.py"
    script.write_text(SCRIPT + call)
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=ENV
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[3, 6]"


def test_sys_path_added_after_the_workers_started_reaches_them(
    runner: ProcessRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_in(runner, lambda: square.map(range(4)).result())  # the workers are up
    (tmp_path / "added_later.py").write_text("def triple(x):\n    return 3 * x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from added_later import triple  # type: ignore[import-not-found]

    @task
    def uses_triple(x: int) -> int:
        return triple(x)  # type: ignore[no-any-return]

    try:
        assert run_in(runner, lambda: uses_triple.map([1, 2]).result()).result() == [3, 6]
    finally:
        del sys.modules["added_later"]


def test_module_the_worker_cannot_import_is_a_clear_error(
    runner: ProcessRunner, tmp_path: Path
) -> None:
    source = tmp_path / "elsewhere.py"
    source.write_text("def helper(x):\n    return x + 1\n")
    spec = importlib.util.spec_from_file_location("elsewhere_only_here", source)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["elsewhere_only_here"] = module
    try:
        spec.loader.exec_module(module)
        helper = module.helper

        @task
        def uses_helper(x: int) -> int:
            return helper(x)  # type: ignore[no-any-return]

        failed = final_state(runner, uses_helper, 1)
    finally:
        del sys.modules["elsewhere_only_here"]
    assert failed.is_failed()
    assert isinstance(failed.error, WorkerLoadError)
    assert "could not be loaded in the worker process" in failed.message
    assert "No module named 'elsewhere_only_here'" in failed.message
    assert "cloudpickle.register_pickle_by_value(elsewhere_only_here)" in failed.message


def test_module_starting_a_process_flow_at_import_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "unguarded_flows.py").write_text(
        textwrap.dedent(
            """
            import os
            from baton import flow, task

            @task
            def plus_one(x):
                return x + 1

            @flow(task_runner="process")
            def everything():
                return plus_one.submit(1).result()

            if os.environ.get("UNGUARDED_RUN_AT_IMPORT") == "1":
                everything()  # what a module without a main guard does
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import unguarded_flows  # type: ignore[import-not-found]

    monkeypatch.setenv("UNGUARDED_RUN_AT_IMPORT", "1")  # the workers import it with this
    try:
        with ProcessRunner(max_workers=1) as r:
            failed = final_state(r, unguarded_flows.plus_one, 1)
    finally:
        del sys.modules["unguarded_flows"]
    assert failed.is_failed()
    assert "module 'unguarded_flows'" in failed.message
    assert 'if __name__ == "__main__":' in failed.message


# -- pickling errors -------------------------------------------------------------------


def test_unpicklable_argument_raises_at_submit_naming_task_and_parameter(
    runner: ProcessRunner,
) -> None:
    lock = threading.Lock()

    def body() -> None:
        with pytest.raises(pickle.PicklingError) as raised:
            add.submit(1, y=lock)
        message = str(raised.value)
        assert "argument 'y' of task 'add' cannot be pickled" in message
        assert "'_thread.lock'" in message
        with pytest.raises(pickle.PicklingError, match="argument 'value' of task 'echo'"):
            echo.map([1, lock])

    assert run_in(runner, body).is_completed()


@task
def two_once_file_exists(path: str) -> int:
    wait_for_file(Path(path))
    return 2


def test_unpicklable_argument_after_an_upstream_fails_the_run(
    runner: ProcessRunner, tmp_path: Path
) -> None:
    lock = threading.Lock()
    gate = tmp_path / "gate"

    def body() -> tuple[State]:
        future = add.submit(two_once_file_exists.submit(str(gate)), y=lock)
        gate.touch()  # only now can the upstream finish: `add` was surely deferred
        future.wait()
        return (future.state,)

    (state,) = run_in(runner, body).result()
    assert state.is_failed()
    assert isinstance(state.error, pickle.PicklingError)
    assert "argument 'y' of task 'add'" in state.message


def test_unpicklable_task_raises_at_submit(runner: ProcessRunner) -> None:
    lock = threading.Lock()

    @task
    def holds_lock() -> bool:
        return lock.locked()

    def body() -> None:
        with pytest.raises(pickle.PicklingError, match="Task 'holds_lock' cannot be pickled"):
            holds_lock.submit()

    assert run_in(runner, body).is_completed()


def test_unpicklable_result_fails_the_run(runner: ProcessRunner) -> None:
    @task
    def make_lock() -> Any:
        return threading.Lock()

    state = final_state(runner, make_lock)
    assert state.is_failed()
    assert isinstance(state.error, pickle.PicklingError)
    assert "task 'make_lock') returned a value that cannot be pickled" in state.message


class NeedsTwo(Exception):
    def __init__(self, a: int, b: int) -> None:
        super().__init__(f"{a} and {b}")


def test_exceptions_that_cannot_travel_keep_type_message_and_traceback(
    runner: ProcessRunner,
) -> None:
    @task
    def raises_with_lock() -> None:
        error = ValueError("holding a lock")
        error.lock = threading.Lock()  # type: ignore[attr-defined]
        raise error

    @task
    def raises_needs_two() -> None:
        raise NeedsTwo(1, 2)  # pickles, but cannot be rebuilt from its args

    def body() -> list[State]:
        futures = [raises_with_lock.submit(), raises_needs_two.submit()]
        wait(futures)
        return [f.state for f in futures]

    with_lock, needs_two = run_in(runner, body).result()
    for state, type_name, text, line in [
        (with_lock, "ValueError", "holding a lock", "raise error"),
        (needs_two, "NeedsTwo", "1 and 2", "raise NeedsTwo(1, 2)"),
    ]:
        assert state.is_failed()
        error = state.error
        assert isinstance(error, RemoteTaskError)
        assert (error.type_name, error.message) == (type_name, text)
        assert f"{type_name}: {text}" in str(error)
        assert line in error.traceback_text  # the real source line, not <dynamic-code>
        assert __file__ in error.traceback_text
        # As for exceptions that travel, the worker's traceback is the cause.
        assert isinstance(error.__cause__, RemoteTraceback)
        assert error.__cause__.text == error.traceback_text


def test_exceptions_carry_the_worker_traceback(runner: ProcessRunner) -> None:
    @task
    def fails(x: int) -> None:
        raise KeyError(x)

    state = final_state(runner, fails, 5)
    error = state.error
    assert type(error) is KeyError
    assert error.args == (5,)
    cause = str(error.__cause__)
    assert "raise KeyError(x)" in cause
    assert __file__ in cause


# -- timeouts --------------------------------------------------------------------------


def test_timeout_kills_the_worker_and_the_pool_carries_on(own_runner: ProcessRunner) -> None:
    @task(timeout_seconds=0.5)
    def stuck(x: float) -> int:
        time.sleep(x)  # blocked in C: only killing the process stops it
        return os.getpid()

    def body() -> tuple[State, int, int]:
        slow = stuck.submit(600)
        slow.wait()
        return slow.state, stuck.submit(0).result(), worker_pid.submit().result()

    started = time.monotonic()
    state, pid, other = run_in(own_runner, body).result()
    assert time.monotonic() - started < 60  # not the 600 s the task asked for
    assert state.type is StateType.FAILED
    assert state.name == "TimedOut"
    assert isinstance(state.error, TaskTimeoutError)
    assert "exceeded its timeout of 0.5 s" in state.message
    killed = int(re.search(r"pid (\d+)", state.message).group(1))  # type: ignore[union-attr]
    assert not _alive(killed)
    assert pid != killed and other != killed


def test_async_timeout_is_hard_too(own_runner: ProcessRunner) -> None:
    @task(timeout_seconds=0.5)
    async def blocks_the_loop() -> None:
        time.sleep(600)

    assert final_state(own_runner, blocks_the_loop).name == "TimedOut"


def test_timeout_per_attempt_with_retries(own_runner: ProcessRunner, tmp_path: Path) -> None:
    attempts = tmp_path / "attempts"

    @task(timeout_seconds=1, retries=2)
    def flaky(path: str) -> int:
        with open(path, "a") as log:
            log.write("x")
        count = len(Path(path).read_text())
        if count == 1:
            raise ValueError("first attempt fails in the worker's engine")
        if count == 2:
            time.sleep(600)  # second attempt times out: the parent kills the worker
        return count

    # the third attempt, after one that failed and one that timed out
    assert final_state(own_runner, flaky, str(attempts)).result() == 3


def test_timeout_ends_the_run_when_retries_are_used_up(
    own_runner: ProcessRunner, tmp_path: Path
) -> None:
    attempts = tmp_path / "attempts"

    @task(timeout_seconds=1, retries=1)
    def fails_then_hangs(path: str) -> None:
        with open(path, "a") as log:
            log.write("x")
        if len(Path(path).read_text()) == 1:
            raise ValueError("first attempt")
        time.sleep(600)

    final = final_state(own_runner, fails_then_hangs, str(attempts))
    assert final.name == "TimedOut"
    assert attempts.read_text() == "xx"  # the worker's retry counted: no third attempt


# -- crashes ---------------------------------------------------------------------------


@task
def dies(how: str) -> str:
    if how == "exit":
        os._exit(3)
    if how == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    if how == "segfault":
        ctypes.string_at(0)
    return how


def test_worker_death_crashes_only_its_run(own_runner: ProcessRunner) -> None:
    def body() -> dict[str, State]:
        futures = {how: dies.submit(how) for how in ["exit", "fine", "sigkill", "segfault"]}
        survivors = square.map(range(20))
        wait(list(futures.values()))
        assert survivors.result() == [i * i for i in range(20)]
        return {how: f.state for how, f in futures.items()}

    flow_state = run_in(own_runner, body)
    assert flow_state.is_completed()  # the flow finishes
    states = flow_state.result()
    assert states["fine"].result() == "fine"
    for how, detail in [
        ("exit", "exited with code 3"),
        ("sigkill", "was killed by signal SIGKILL"),
        ("segfault", "was killed by signal SIGSEGV"),
    ]:
        state = states[how]
        assert state.type is StateType.CRASHED
        assert isinstance(state.error, CrashedRun)
        assert "its worker process (pid" in state.message
        assert detail in state.message
        assert "while running it" in state.message
    with pytest.raises(CrashedRun, match="exited with code 3"):
        states["exit"].result()


@task
def forks_then_dies(path: str) -> None:
    child = os.fork()  # the child shares the worker's socket: no end-of-file comes
    if child == 0:
        time.sleep(600)
        os._exit(0)
    Path(path).write_text(str(child))
    os._exit(5)


def test_worker_death_is_found_while_its_child_holds_the_socket(
    own_runner: ProcessRunner, tmp_path: Path
) -> None:
    record = tmp_path / "child"
    state = final_state(own_runner, forks_then_dies, str(record))
    assert state.type is StateType.CRASHED
    assert "exited with code 5" in state.message
    child = int(record.read_text())
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:  # what the worker started dies too
        time.sleep(0.02)
    assert not _alive(child)


def test_crashed_run_is_retried_after_its_delay(own_runner: ProcessRunner, tmp_path: Path) -> None:
    log = tmp_path / "attempts"

    @task(retries=2, retry_delay_seconds=0.3)
    def crashes_once(path: str) -> int:
        with open(path, "a") as out:
            out.write(f"{time.time()}\n")
        if len(Path(path).read_text().splitlines()) == 1:
            os._exit(1)
        return os.getpid()

    seen: list[State] = []

    def body() -> int:
        future = crashes_once.submit(str(log))
        future.add_done_callback(lambda f: seen.append(f.state))
        return future.result()

    assert run_in(own_runner, body).is_completed()
    first, second = (float(t) for t in log.read_text().split())
    assert second - first >= 0.3
    assert seen[0].is_completed()


def test_crash_without_retries_left_runs_failure_hooks_in_the_parent(
    own_runner: ProcessRunner,
) -> None:
    hooked: list[tuple[str, StateType]] = []

    @task(retries=1, on_failure=[lambda t, r, s: hooked.append((r.name, s.type))])
    def always_dies() -> None:
        os._exit(9)

    state = final_state(own_runner, always_dies)
    assert state.type is StateType.CRASHED
    assert "exited with code 9" in state.message
    assert [t for _, t in hooked] == [StateType.CRASHED]


# -- cancelling, shutting down, Ctrl-C -------------------------------------------------


@pytest.mark.parametrize("through", ["future", "runner"])
def test_cancel_drops_a_queued_run(tmp_path: Path, through: str) -> None:
    """Through the run's future, or `runner.cancel(run)` called directly (which dropped
    the queued run without a state: the flow waited for it for ever)."""
    release = tmp_path / "release"
    ran = tmp_path / "ran"

    @task
    def blocker() -> str:
        wait_for_file(release)
        return "released"

    @task
    def queued() -> None:
        ran.touch()

    with ProcessRunner(max_workers=1) as one:

        def body() -> tuple[bool, State, str]:
            first = blocker.submit()
            second = queued.submit()
            cancelled = second.cancel() if through == "future" else one.cancel(second.task_run)
            release.touch()
            second.wait(30)
            return cancelled, second.state, first.result()

        cancelled, state, first = run_in(one, body).result()
    assert cancelled is True
    assert state.type is StateType.CANCELLED
    assert first == "released"
    assert not ran.exists()


def test_shutdown_leaves_no_worker_behind() -> None:
    r = ProcessRunner(max_workers=2).start()
    pids = set(run_in(r, lambda: worker_pid.map(range(10)).result()).result())
    assert pids and pids <= set(_worker_pids(r))
    r.shutdown()
    assert r.closed
    assert not [p for p in pids if _alive(p)]


def test_shutdown_without_waiting_stops_running_work(tmp_path: Path) -> None:
    @task
    def forever() -> None:
        Path(tmp_path, "started").touch()
        time.sleep(600)

    r = ProcessRunner(max_workers=1).start()

    @flow(task_runner=r)
    def body() -> Any:
        running = forever.submit()
        queued = forever.submit()
        wait_for_file(tmp_path / "started")
        pids = _worker_pids(r)
        r.shutdown(wait=False)  # returns once every run has a final state
        return running.state, queued.state, pids

    running, queued, pids = body()
    assert running.type is StateType.CRASHED
    assert "shut down without waiting" in running.message
    assert queued.type is StateType.CANCELLED
    assert not [p for p in pids if _alive(p)]


INTERRUPTED = """
import sys, time
from pathlib import Path
from baton import flow, task

@task
def work(i):
    Path(sys.argv[1], str(i)).touch()
    time.sleep(0.2)
    return i

@flow(task_runner="process")
def long_map():
    return work.map(range(1000)).result()

long_map()
"""


@pytest.mark.slow
@pytest.mark.parametrize("target", ["process", "group"])
def test_ctrl_c_mid_map_cancels_and_leaves_no_process(tmp_path: Path, target: str) -> None:
    script = tmp_path / "interrupted.py"
    script.write_text(INTERRUPTED)
    started = tmp_path / "started"
    started.mkdir()
    proc = subprocess.Popen(
        [sys.executable, str(script), str(started)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
        start_new_session=True,  # its own group, as in a terminal
    )
    try:
        deadline = time.monotonic() + 60
        while not any(started.iterdir()):
            assert time.monotonic() < deadline, "no task started"
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.02)
        children = psutil.Process(proc.pid).children(recursive=True)
        assert children  # the workers
        if target == "group":
            os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        else:
            proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0
    assert "KeyboardInterrupt" in stderr
    assert "task run(s) that had not started were cancelled" in stderr
    cancelled = int(stderr.split("interrupted by KeyboardInterrupt; ")[1].split()[0])
    assert cancelled > 500  # of 1000 runs of 0.2 s on two workers, most had not started
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not [p for p in alive if _alive(p.pid)]
    assert len(list(started.iterdir())) < 1000


FORKS = """
import os
from baton import flow, task
from baton._runners.process import ProcessRunner

@task
def one():
    return 1

runner = ProcessRunner(max_workers=1).start()
flow(task_runner=runner)(lambda: one.submit().result())()
pool = runner._pool
held = [pool._lifeline_w] + [w.sock.fileno() for w in pool._workers]
pid = os.fork()  # as multiprocessing's fork start method does
if pid == 0:
    still_open = []
    for fd in held:
        try:
            os.fstat(fd)
            still_open.append(fd)
        except OSError:
            pass
    print("open in child:", still_open, flush=True)
    os._exit(0)
os.waitpid(pid, 0)
runner.shutdown()
"""


def test_a_forked_child_does_not_hold_the_workers_lifeline(tmp_path: Path) -> None:
    script = tmp_path / "forks.py"
    script.write_text(FORKS)
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=ENV
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "open in child: []"


@pytest.mark.slow
def test_workers_exit_when_the_parent_process_dies(tmp_path: Path) -> None:
    script = tmp_path / "dies.py"
    script.write_text(
        textwrap.dedent(
            """
            import os, time
            from baton import flow, task

            @task
            def sleeper(_):
                # One write call per line: the two workers print at the same moment
                # into one pipe, and print()'s line once came out as two pids run
                # together ("88348833").
                os.write(1, f"{os.getpid()}\\n".encode())
                time.sleep(600)

            @flow(task_runner="process")
            def f():
                sleeper.map(range(2))
                time.sleep(600)

            f()
            """
        )
    )
    with subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=ENV
    ) as proc:
        try:
            assert proc.stdout is not None
            workers = [psutil.Process(int(proc.stdout.readline())) for _ in range(2)]
        finally:
            proc.kill()  # no chance to clean up
    _, alive = psutil.wait_procs(workers, timeout=20)
    assert not [p for p in alive if _alive(p.pid)]


def test_a_worker_that_sends_a_result_out_of_turn_crashes_its_run_and_loses_none(
    tmp_path: Path,
) -> None:
    # A task that forks and returns in the child as well: the child's copy of the
    # worker loop sends run 1's result again while the worker runs the next run. The
    # pool took that next run off the worker's list before it saw the mismatch, so it
    # never ended and the flow waited for ever (Ctrl-C too). Now it crashes, saying
    # why, and the runs behind it run on another worker.
    script = tmp_path / "forks.py"
    script.write_text(
        textwrap.dedent(
            """
            import os, time
            from baton import flow, get_runner, task

            @task
            def forks(x):
                if os.fork() == 0:
                    time.sleep(0.5)  # the worker has gone on to the next run by then
                return x

            @task
            def slow(x):
                time.sleep(1.5)
                return x

            @flow(task_runner=get_runner("process", max_workers=1))
            def body():
                forks.submit(1).wait()
                runs = slow.map(range(3))
                runs.wait()
                return [(run.state.name, run.state.message) for run in runs]

            for name, message in body():
                print(name, message, flush=True)
            """
        )
    )
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, env=ENV
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 3, done.stdout
    assert lines[0].startswith("Crashed ") and "could not make sense of" in lines[0]
    assert lines[1:] == ["Completed None", "Completed None"]


@task(resources={"GPU": 1})
def gpu_leaf(x: int) -> int:
    return x + 1


@task(resources={"GPU": 1})
def gpu_parent(x: int) -> list[int]:
    return gpu_leaf.map([x, x + 1]).result()


def test_runs_a_task_submits_in_a_worker_do_not_wait_for_resources() -> None:
    """The parent holds the only GPU in the flow's process; its nested runs run inside
    its worker process, where capacities are not enforced, so they cannot deadlock."""

    @flow(task_runner=get_runner("process", max_workers=1, resources={"GPU": 1}))
    def nested() -> list[int]:
        return gpu_parent.submit(1).result()

    assert nested() == [2, 3]
