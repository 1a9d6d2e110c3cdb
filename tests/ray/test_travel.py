"""What crosses between Ray workers and the flow's process: runs a task submits and
leaves failing, errors and results that do not survive the trip, tasks of a script's
``__main__``, RUNNING reports, and the driver's threads after a callback raises."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import pytest
import ray_tasks as rt
from baton import (
    FlowRunFailed,
    Future,
    State,
    StateType,
    flow,
    task,
)
from baton.testing._rendezvous import Rendezvous
from otel_spans import hex_id, one, recorded_spans
from raysetup import RAY_ENV, import_path

pytestmark = pytest.mark.usefixtures("ray_local")


def test_a_failing_subtask_nobody_read_fails_the_flow_and_its_parent_completes() -> None:
    parents: list[Future[Any]] = []

    @flow(task_runner="ray")
    def forgetful() -> str:
        parent = rt.forgets_a_failing_subtask.submit()
        parents.append(parent)
        return parent.result()

    with pytest.raises(FlowRunFailed, match=r"fails-") as raised:
        forgetful()
    assert "lost subtask 7" in str(raised.value)
    assert parents[0].state.type is StateType.COMPLETED


def test_an_exception_needing_two_arguments_fails_with_its_type_and_message() -> None:
    @flow(task_runner="ray")
    def run() -> tuple[State, BaseException]:
        future = rt.raises_two_argument_error.submit()
        future.wait()
        return future.state, future.result(raise_on_failure=False)

    state, error = run()
    assert state.type is StateType.FAILED, state
    assert "NeedsTwoArguments" in repr(error) or "NeedsTwoArguments" in str(error)
    assert "code 42: the answer" in str(error)


def test_an_exception_whose_str_raises_fails_the_run_as_itself() -> None:
    @flow(task_runner="ray")
    def run() -> tuple[State, BaseException]:
        future = rt.raises_unprintable.submit()
        future.wait()
        return future.state, future.result(raise_on_failure=False)

    state, error = run()
    assert state.type is StateType.FAILED, state
    assert "UnprintableError" in f"{type(error).__name__} {error!s}"


def test_a_result_that_cannot_be_rebuilt_here_raises_a_clear_error() -> None:
    @flow(task_runner="ray")
    def run() -> tuple[str, BaseException | None]:
        future = rt.only_on_workers.submit(os.getpid())
        try:
            future.result()
        except Exception as exc:
            return future.name, exc
        return future.name, None

    name, error = run()
    assert error is not None, "the result was rebuilt here"
    assert name in str(error) and "cannot be unpickled here" in str(error), error


def test_a_run_on_a_worker_reads_running(rv: Rendezvous) -> None:
    @flow(task_runner="ray")
    def run() -> list[StateType]:
        seen = []
        for tag, submit in (
            ("whole", rt.wait_for_release.submit),
            ("attempt", rt.wait_for_release.with_options(retries=1).submit),
        ):
            future = submit(rv, tag)
            rv.wait(f"started-{tag}", timeout=60)
            seen.append(future.state.type)
            rv.signal(f"release-{tag}")
            future.result()
        return seen

    assert run() == [StateType.RUNNING, StateType.RUNNING]


def test_a_done_callback_that_raises_system_exit_leaves_the_driver_working() -> None:
    def exit_now(_: Future[Any]) -> None:
        raise SystemExit("from a done callback")

    @flow(task_runner="ray")
    def run() -> list[int]:
        first = rt.noop.submit(1)
        first.add_done_callback(exit_now)
        first.wait()
        later = [rt.noop.submit(i) for i in range(2, 5)]
        return [first.result(), *(f.result(timeout=60) for f in later)]

    assert run() == [1, 2, 3, 4]


def test_a_retry_delay_callable_returning_junk_fails_the_run() -> None:
    @flow(task_runner="ray")
    def run() -> tuple[StateType, str | None]:
        future = rt.fails_with_junk_delay.submit()
        future.wait(60)
        return future.state.type, future.state.message

    kind, message = run()
    assert kind is StateType.FAILED, message
    assert "soon" in str(message), message


SCRIPT = textwrap.dedent(
    """
    import sys
    from baton import flow, task
    from baton_ray import RayTaskRunner


    def double(x):
        return 2 * x


    class Scaler:
        def __init__(self, factor):
            self.factor = factor

        def __call__(self, x):
            return self.factor * x


    @flow(task_runner=RayTaskRunner(init_kwargs={
        "num_cpus": 1, "include_dashboard": False, "log_to_driver": False,
        "_temp_dir": sys.argv[1],
    }))
    def main():
        doubled = task(double).submit(3)
        return doubled.result(), task(Scaler(5)).submit(doubled).result()


    if __name__ == "__main__":
        print(main())
    """
)


def test_tasks_of_a_scripts_main_run_on_ray(tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    temp_dir = tempfile.mkdtemp(prefix="bray-")
    try:
        done = subprocess.run(
            [sys.executable, str(script), temp_dir],
            capture_output=True,
            text=True,
            timeout=240,
            env={**os.environ, **RAY_ENV, "PYTHONPATH": import_path()},
            cwd=tmp_path,
        )
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "(6, 30)", done.stdout


def test_runs_and_the_runs_they_submit_are_in_the_flows_trace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With OpenTelemetry on, the trace context travels with each run to its worker."""

    @task
    def trace_id() -> str:
        from opentelemetry import trace

        return format(trace.get_current_span().get_span_context().trace_id, "032x")

    @task(retries=1)
    def submits() -> list[str]:
        return [trace_id(), trace_id.submit().result()]

    @flow(task_runner="ray")
    def traced() -> list[str]:
        return [trace_id.submit().result(), *submits.submit().result()]

    with recorded_spans(monkeypatch) as spans:
        ids = traced()
    flow_span = one(spans.get_finished_spans(), "flow traced")
    assert ids == [hex_id(flow_span.context.trace_id)] * 3
