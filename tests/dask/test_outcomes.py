"""What comes back from a Dask worker, and when: RUNNING while a run executes there, results
and errors that cannot be rebuilt in the flow's process, done callbacks that raise, and
tasks made from functions of a script's ``__main__``."""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from baton import Future, FutureList, State, StateType, flow, task
from baton_dask import DaskTaskRunner
from distributed import LocalCluster


@pytest.fixture
def runner(cluster: LocalCluster) -> Iterator[DaskTaskRunner]:
    with DaskTaskRunner(cluster.scheduler_address) as started:
        yield started


def _wait_for(path: Path) -> None:
    deadline = time.monotonic() + 60
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.01)


def _add_path(path: str) -> None:
    sys.path.insert(0, path)


def _remove_path(path: str) -> None:
    sys.path.remove(path)


def _type_once(future: Future[Any], wanted: StateType) -> StateType:
    """The type of the run's state once it is `wanted`, or the last seen after 60 s."""
    deadline = time.monotonic() + 60
    kind = future.task_run.state.type
    while kind is not wanted and time.monotonic() < deadline:
        time.sleep(0.01)
        kind = future.task_run.state.type
    return kind


@task
def held(started: str, release: str) -> str:
    Path(started).touch()
    while not Path(release).exists():
        time.sleep(0.01)
    return "released"


@task
def inc(x: int) -> int:
    return x + 1


@task
def returns_worker_only(module: str) -> Any:
    return importlib.import_module(module).OnlyOnWorkers(3)


class StrRaises(Exception):
    def __str__(self) -> str:
        raise RuntimeError("str() of this error raises")


class TwoArguments(Exception):
    def __init__(self, first: str, second: str) -> None:
        super().__init__(first)
        self.second = second


@task
def raises_str_raises() -> None:
    raise StrRaises()


@task
def raises_two_arguments() -> None:
    raise TwoArguments("first", "second")


def test_a_run_reads_running_while_it_runs_on_a_worker(
    runner: DaskTaskRunner, tmp_path: Path
) -> None:
    started, release = tmp_path / "started", tmp_path / "release"

    @flow(task_runner=runner)
    def watched() -> tuple[StateType, str]:
        future = held.submit(str(started), str(release))
        _wait_for(started)
        seen = _type_once(future, StateType.RUNNING)
        release.touch()
        return seen, future.result()

    assert watched() == (StateType.RUNNING, "released")


def test_a_result_whose_class_only_the_workers_have_fails_its_run(
    runner: DaskTaskRunner, tmp_path: Path
) -> None:
    module = f"only_on_workers_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{module}.py").write_text(
        "class OnlyOnWorkers:\n    def __init__(self, n):\n        self.n = n\n"
    )
    runner.client.run(_add_path, str(tmp_path))
    try:

        @flow(task_runner=runner)
        def foreign() -> tuple[State]:
            future = returns_worker_only.submit(module)
            future.wait()
            return (future.state,)

        [state] = foreign()
    finally:
        runner.client.run(_remove_path, str(tmp_path))
    assert state.is_failed(), state
    assert "returns_worker_only-" in str(state.message)
    assert "cannot be unpickled here" in str(state.message)
    assert module in str(state.message)


@pytest.mark.parametrize(
    ("failing", "type_name"),
    [(raises_str_raises, "StrRaises"), (raises_two_arguments, "TwoArguments")],
)
def test_an_error_that_cannot_travel_still_fails_the_run_under_its_name(
    runner: DaskTaskRunner, failing: Any, type_name: str
) -> None:
    @flow(task_runner=runner)
    def failed() -> tuple[State]:
        future = failing.submit()
        future.wait()
        return (future.state,)

    [state] = failed()
    assert state.type is StateType.FAILED, state
    assert type_name in str(state.message)
    assert type(state.error).__name__ in (type_name, "RemoteTaskError")


def test_a_done_callback_that_raises_does_not_stop_the_runner(
    runner: DaskTaskRunner, tmp_path: Path
) -> None:
    def exits(_: Future[Any]) -> None:
        raise SystemExit("a done callback exits")

    def raises(_: Future[Any]) -> None:
        raise RuntimeError("a done callback raises")

    started, release = tmp_path / "started", tmp_path / "release"

    @flow(task_runner=runner)
    def callbacks() -> tuple[str, bool, list[int] | None]:
        first = held.submit(str(started), str(release))
        first.add_done_callback(exits)
        first.add_done_callback(raises)
        release.touch()
        first.wait()
        later: FutureList[int] = inc.map(range(5))
        later.wait(timeout=60)
        ended = all(f.done() for f in later)
        return first.result(), ended, later.result() if ended else None

    first, ended, later = callbacks()
    assert first == "released"
    assert ended, "runs after the callback never ended"
    assert later == [1, 2, 3, 4, 5]


def test_a_task_made_from_a_function_of_the_scripts_main_runs(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    script = tmp_path / "script.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys
            from baton import flow, task
            from baton_dask import DaskTaskRunner

            def square(x):
                return x * x

            @flow
            def squares(n):
                return task(square).map(range(n)).result()

            if __name__ == "__main__":
                runner = DaskTaskRunner(sys.argv[1])
                print(squares.with_options(task_runner=runner)(4))
            """
        )
    )
    done = subprocess.run(
        [sys.executable, str(script), cluster.scheduler_address],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[0, 1, 4, 9]"
