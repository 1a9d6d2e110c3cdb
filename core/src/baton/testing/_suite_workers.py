"""Conformance tests (level 2): the same program ends in the same states on every runner,
wherever its runs execute: failing subtasks nobody read, crashed attempts and the retry
rule, hard timeouts of work blocked in C, RUNNING read while a run executes, and tasks
defined in a script's ``__main__``."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from baton import Capability, FlowRunFailed, State, StateType, TaskTimeoutError
from baton.testing._rendezvous import WAIT_SECONDS
from baton.testing._spec import conformance
from baton.testing._tasks import (
    KitAbort,
    die_counted,
    exit_counted,
    fire_and_forget,
    hold_connection,
    inc,
    returns_unloadable,
    stoppable,
)

if TYPE_CHECKING:
    from baton import Future
    from baton.testing._kit import Kit

__all__ = ["WorkerTests"]

MARGIN_SECONDS = 10.0
"""How much later than its timeout a hard-timed-out run may end, and its work be gone, and
how long after a run started executing the flow may take to read RUNNING: a safety net
for a loaded machine, far above what stopping a worker or reporting a state takes."""

_SCRIPT = '''\
"""A flow whose tasks are defined in the script itself, as users write them."""

import json
import os

from baton import flow, task
from baton.runners import current_runner


def double(x):
    return 2 * x


double_task = task(double)


@task
def add_one(x):
    return x + 1, os.getpid()


@flow
def main():
    doubled = double_task.map([1, 2, 3]).result()
    value, pid = add_one.submit(double_task.submit(20)).result()
    return {
        "runner": current_runner().name,
        "doubled": doubled,
        "value": value,
        "ran_in_this_process": pid == os.getpid(),
    }


if __name__ == "__main__":
    print("RESULT " + json.dumps(main()))
'''


def _final(future: Future[Any], seconds: float = WAIT_SECONDS) -> State:
    assert future.wait(seconds), (
        f"rule: every run reaches a final state; {future.name!r} is still {future.state!r} "
        f"after {seconds:g} s"
    )
    return future.state


def _closed_by_peer(connection: socket.socket, seconds: float) -> bool:
    """True when the other end of `connection` closes it within `seconds`."""
    connection.settimeout(seconds)
    try:
        while True:
            if not connection.recv(1024):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


class WorkerTests:
    # -- nested runs ---------------------------------------------------------------------

    @conformance(level=2, requires=(Capability.NESTED,))
    def test_a_failing_subtask_nobody_read_fails_the_flow(self, kit: Kit) -> None:
        seen: list[tuple[State, str]] = []

        def body() -> None:
            parent = fire_and_forget.submit("nobody reads this")
            seen.append((_final(parent), parent.result(raise_on_failure=False)))

        flow_state = kit.run_state(body)
        [(parent, subtask)] = seen
        assert parent.type is StateType.COMPLETED, (
            "rule: a task that submits a failing subtask and never reads it completes "
            f"itself; got {parent!r}"
        )
        assert flow_state.is_failed() and isinstance(flow_state.error, FlowRunFailed), (
            "rule: a subtask's failure that nobody handled fails the flow with "
            f"FlowRunFailed, wherever the subtask ran; got {flow_state!r}"
        )
        assert subtask in str(flow_state.error), (
            f"rule: the flow's error names the failed subtask run {subtask!r}; "
            f"got {str(flow_state.error)!r}"
        )

    # -- crashes and the retry rule ------------------------------------------------------

    @conformance(level=2, requires=(Capability.CRASH_DETECTION,))
    def test_a_crashed_attempt_is_retried_within_retries(self, kit: Kit) -> None:
        rv = kit.rv

        def body() -> tuple[State, State]:
            once = die_counted.with_options(retries=0).submit(rv, "once", 3)
            twice = die_counted.with_options(retries=1, retry_delay_seconds=0).submit(
                rv, "twice", 3
            )
            return _final(once), _final(twice)

        once, twice = kit.run(body)
        assert once.type is StateType.CRASHED and twice.type is StateType.CRASHED, (
            f"rule: a run whose worker died on every attempt ends CRASHED; got {once!r} and "
            f"{twice!r}"
        )
        attempts = len(rv.records("attempt-once")), len(rv.records("attempt-twice"))
        assert attempts == (1, 2), (
            "rule: an attempt whose worker died is retried like a failed one, within "
            f"`retries`: retries=0 makes 1 attempt and retries=1 makes 2; they made {attempts}"
        )

    @conformance(level=2)
    def test_a_base_exception_is_never_retried(self, kit: Kit) -> None:
        rv = kit.rv

        def body() -> tuple[State, State]:
            retried = exit_counted.with_options(retries=2, retry_delay_seconds=0)
            return (
                _final(retried.submit(rv, "exit", "SystemExit")),
                _final(retried.submit(rv, "abort", "KitAbort")),
            )

        exited, aborted = kit.run(body)
        assert exited.type is StateType.CRASHED and isinstance(exited.error, SystemExit), (
            f"rule: a run ended by SystemExit is CRASHED with it; got {exited!r}"
        )
        assert aborted.type is StateType.CRASHED and isinstance(aborted.error, KitAbort), (
            f"rule: a run ended by a BaseException is CRASHED with it; got {aborted!r}"
        )
        attempts = len(rv.records("attempt-exit")), len(rv.records("attempt-abort"))
        assert attempts == (1, 1), (
            "rule: a BaseException raised by the task (SystemExit, KeyboardInterrupt) crashes "
            f"the run and is not retried, whatever `retries` says; attempts made: {attempts}"
        )

    # -- hard timeouts -------------------------------------------------------------------

    @conformance(
        level=2,
        requires=(Capability.HARD_TIMEOUTS,),
        concurrent="this test needs the flow to accept a connection while the run is in flight",
    )
    def test_a_hard_timeout_stops_work_blocked_in_c(self, kit: Kit) -> None:
        timeout = 1.0
        with socket.create_server(("127.0.0.1", 0)) as listener:
            listener.settimeout(WAIT_SECONDS)
            port = listener.getsockname()[1]
            held: list[socket.socket] = []

            def body() -> tuple[bool, bool, State, bool]:
                stuck = hold_connection.with_options(timeout_seconds=timeout).submit(port)
                try:
                    connection, _ = listener.accept()  # the run executes, blocked in recv()
                except TimeoutError:
                    raise AssertionError(
                        f"the run {stuck.name!r} never connected to the test's listener in "
                        f"{WAIT_SECONDS:g} s (it is {stuck.state!r}): it did not start, so the "
                        "kit cannot check that a hard timeout stops it"
                    ) from None
                held.append(connection)
                quick = inc.submit(1)
                quick_in_time = quick.wait(timeout + MARGIN_SECONDS)
                ended_in_time = stuck.wait(timeout + MARGIN_SECONDS)
                state = _final(stuck)
                stopped = _closed_by_peer(connection, MARGIN_SECONDS)
                return quick_in_time and quick.state.is_completed(), ended_in_time, state, stopped

            try:
                quick_ok, ended_in_time, state, stopped = kit.run(body)
            finally:
                for connection in held:  # a run that was not stopped can return now
                    connection.close()
        assert ended_in_time and state.name == "TimedOut", (
            f"rule: a sync run blocked in a C call past its timeout_seconds={timeout:g} ends "
            f"TimedOut on time; after {timeout + MARGIN_SECONDS:g} s it was {state!r}"
        )
        assert isinstance(state.error, TaskTimeoutError), state.error
        assert stopped, (
            "rule: with HARD_TIMEOUTS, the work of a sync run blocked in a C call past its "
            f"timeout is stopped; {MARGIN_SECONDS:g} s after the run timed out, the socket it "
            "held was still open, so its work went on (an exception raised in its thread "
            "cannot interrupt a C call: stop the worker)"
        )
        assert quick_ok, (
            "rule: a run stuck past its timeout does not hold up other runs beyond the "
            f"timeout; a quick run submitted meanwhile had not completed after "
            f"{timeout + MARGIN_SECONDS:g} s"
        )

    # -- results --------------------------------------------------------------------------

    @conformance(level=2, requires=(Capability.PROCESSES,))
    def test_a_result_that_cannot_be_rebuilt_fails_its_run(self, kit: Kit) -> None:
        # Small and large: a runner may keep a large result where it was made until it
        # is read, but the run must not read COMPLETED with a result nobody can read.
        def body() -> list[tuple[str, State]]:
            futures = [returns_unloadable.submit(size) for size in (10, 2_000_000)]
            return [(future.name, _final(future)) for future in futures]

        for name, state in kit.run(body):
            assert state.is_failed(), (
                "rule: a run whose result pickles but cannot be rebuilt from its pickle "
                f"ends FAILED saying so, on every runner; {name!r} ended {state!r}"
            )
            message = str(state.message)
            assert "cannot be unpickled" in message and "refuses to be rebuilt" in message, (
                "rule: the failure says that the result cannot be unpickled, and why; "
                f"{name!r} says {message!r}"
            )

    # -- states reported from workers ----------------------------------------------------

    @conformance(
        level=2,
        concurrent="this test needs the flow to read the run's state while the run executes",
    )
    def test_an_executing_run_reads_running(self, kit: Kit) -> None:
        rv = kit.rv

        def body() -> tuple[list[str], State]:
            future = stoppable.submit(rv, "watched", "done")
            seen: list[str] = []
            try:
                rv.wait("started-watched")
                deadline = time.monotonic() + MARGIN_SECONDS
                while time.monotonic() < deadline:
                    state = future.state
                    if not seen or seen[-1] != state.type.value:
                        seen.append(state.type.value)
                    if state.is_running() or state.is_final():
                        break
                    threading.Event().wait(0.005)
            finally:
                rv.signal("release-watched")
            return seen, _final(future)

        seen, final = kit.run(body)
        assert "RUNNING" in seen, (
            "rule: a run that is executing reads RUNNING in the flow, wherever it runs "
            "(report it when the worker starts it: TaskRun.set_running()); in the "
            f"{MARGIN_SECONDS:g} s after the run started executing, the flow read only {seen}"
        )
        assert final.is_completed() and final.result() == "done", final

    # -- scripts -------------------------------------------------------------------------

    @conformance(level=2, manages_runner=True, by_name=True)
    def test_tasks_defined_in_a_scripts_main_run_on_the_runner(self, kit: Kit) -> None:
        assert kit.runner_name is not None
        directory = Path(kit.rv.directory, "script")
        directory.mkdir()
        script = directory / "flow_in_main.py"
        script.write_text(textwrap.dedent(_SCRIPT))
        env = dict(os.environ)
        env["BATON_TASK_RUNNER"] = kit.runner_name
        # The runner's modules import in the script's process as they do here.
        paths = [p or os.getcwd() for p in sys.path] + [env.get("PYTHONPATH", "")]
        env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
        try:
            done = subprocess.run(
                [sys.executable, str(script)],
                cwd=directory,
                env=env,
                capture_output=True,
                text=True,
                timeout=WAIT_SECONDS * 3,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise AssertionError(
                "rule: tasks defined with task(fn) and @task in a script's __main__ run on "
                f"the runner; the script with BATON_TASK_RUNNER={kit.runner_name} did not "
                f"finish in {WAIT_SECONDS * 3:g} s"
            ) from exc
        output = done.stdout + done.stderr
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        assert done.returncode == 0 and lines, (
            "rule: tasks defined with task(fn) and @task in a script's __main__ run on the "
            f"runner; the script with BATON_TASK_RUNNER={kit.runner_name} exited with "
            f"{done.returncode}:\n{output[-3000:]}"
        )
        result = json.loads(lines[-1].removeprefix("RESULT "))
        assert result["runner"] == kit.runner.name, (
            f"rule: BATON_TASK_RUNNER={kit.runner_name} selects the runner under test "
            f"({kit.runner.name!r}); the script's flow ran on {result['runner']!r}"
        )
        assert (result["doubled"], result["value"]) == ([2, 4, 6], 41), (
            f"rule: tasks defined in a script's __main__ return their results; got {result}"
        )
        if Capability.PROCESSES in kit.runner.capabilities:
            assert not result["ran_in_this_process"], (
                "rule: a runner that declares PROCESSES runs a script's tasks outside the "
                "script's process"
            )
