"""Faults: worker processes killed with SIGKILL in the middle of a map, and runs ended by
`KeyboardInterrupt` or `SystemExit` inside a worker.

A run chosen to be killed announces its worker's pid and blocks; the test kills that
process from outside, at the moment the run is on it, while the rest of the map goes
on. Which runs are killed is drawn at random (seeded per runner), so the kills fall at
random points of the map. Killing a worker can also end runs that were queued on it: those count as
crashed attempts and are retried like the others.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest
from baton import CrashedRun, Future, State, StateType, TaskRunner, flow, unmapped
from baton.testing._rendezvous import Rendezvous
from reliability_support import Report, runners
from reliability_tasks import DOOMED_SECONDS, add, ends_with, kill, work

MAP_SIZES = {"process": 300, "dask": 60, "ray": 80}
SURVIVORS = 4  # runs killed once, then retried to completion
FATAL = 2  # runs without retries, killed once: they end CRASHED
RETRIES = 5  # more than the kills, so collateral crashes cannot use a survivor's retries up


def _kill_doomed(
    rv: Rendezvous, victims: dict[int, Future[int]], killed: list[int], collateral: list[int]
) -> None:
    """Kill the worker of each victim's doomed attempt as soon as the attempt announces
    itself, in whatever order they come; a victim that ends without reaching that attempt
    (its worker crashed while the run was queued there) is noted as collateral."""
    waiting = dict(victims)
    deadline = time.monotonic() + DOOMED_SECONDS
    while waiting:
        if time.monotonic() > deadline:
            raise AssertionError(f"runs {sorted(waiting)} never reached their doomed attempt")
        for index, future in list(waiting.items()):
            marker = f"doomed-{index}-1"
            if rv.is_set(marker):
                pid = int(rv.read(marker))
                assert pid != os.getpid()
                kill(pid)
                killed.append(pid)
                del waiting[index]
            elif future.done():
                collateral.append(index)
                del waiting[index]
        time.sleep(0.01)


@pytest.mark.slow
@pytest.mark.parametrize(
    "runner_name", runners("process", "dask", "ray"), indirect=True, scope="module"
)
def test_workers_killed_during_a_map(
    runner: TaskRunner, runner_name: str, tmp_path: Path, report: Report
) -> None:
    n = MAP_SIZES[runner_name]
    rng = random.Random(f"kills-{runner_name}")
    survivors = set(rng.sample(range(n), SURVIVORS))
    fatal = list(range(n, n + FATAL))
    rv = Rendezvous(tmp_path)
    killed: list[int] = []
    collateral: list[int] = []

    @flow(task_runner=runner)
    def map_under_fire() -> tuple[list[State], list[State]]:
        steady = work.with_options(retries=RETRIES).map(
            unmapped(rv), range(n), [1 if i in survivors else 0 for i in range(n)]
        )
        fragile = work.with_options(retries=0).map(unmapped(rv), fatal, 1)
        by_index = dict(zip(range(n), steady, strict=True)) | dict(zip(fatal, fragile, strict=True))
        _kill_doomed(rv, {i: by_index[i] for i in [*survivors, *fatal]}, killed, collateral)
        steady.wait()
        fragile.wait()
        return steady.states, fragile.states

    steady_states, fragile_states = map_under_fire()

    # Nothing is left PENDING or RUNNING; every run that was not doomed to the end completes.
    assert all(s.is_final() for s in [*steady_states, *fragile_states])
    wrong = {
        i: s for i, s in enumerate(steady_states) if not s.is_completed() or s.result() != i * i
    }
    assert not wrong, f"runs that did not complete with their result: {wrong}"
    for index in survivors:
        assert len(rv.records(f"attempt-{index}")) >= 2, f"run {index} was not retried"
    # A run killed with no retry left ends CRASHED, and says why.
    for state in fragile_states:
        assert state.type is StateType.CRASHED, state
        assert isinstance(state.error, CrashedRun), state
        assert "crashed" in str(state.message), state.message
    attempts = sum(len(rv.records(f"attempt-{i}")) for i in [*range(n), *fatal])
    report.record(
        "workers killed during a map",
        runner_name,
        runs=n + FATAL,
        workers_killed=len(killed),
        attempts=attempts,
        completed=sum(s.is_completed() for s in [*steady_states, *fragile_states]),
        crashed=sum(s.is_crashed() for s in [*steady_states, *fragile_states]),
        collateral_before_start=len(collateral),
        crash_message=str(fragile_states[0].message),
    )
    assert len(killed) + len(collateral) == SURVIVORS + FATAL
    assert len(killed) >= SURVIVORS  # survivors always reach their doomed attempt


@pytest.mark.parametrize(
    "runner_name", runners("thread", "process", "dask", "ray"), indirect=True, scope="module"
)
def test_keyboard_interrupt_or_system_exit_in_a_task_crashes_only_that_run(
    runner: TaskRunner, runner_name: str, report: Report
) -> None:
    hows = ["value", "keyboard-interrupt", "value", "system-exit", "value"]

    @flow(task_runner=runner)
    def carries_on() -> tuple[list[State], int]:
        futures = ends_with.map(hows, range(len(hows)))
        states = [f.wait() and f.state for f in futures]
        # The flow goes on: more runs after the crashed ones, on the same runner.
        after = add.submit(futures[0], futures[4]).result()
        return states, after

    states, after = carries_on()
    assert after == 4
    assert [s.type for s in states] == [
        StateType.COMPLETED,
        StateType.CRASHED,
        StateType.COMPLETED,
        StateType.CRASHED,
        StateType.COMPLETED,
    ]
    assert [states[i].result() for i in (0, 2, 4)] == [0, 2, 4]
    for index, name in ((1, "KeyboardInterrupt"), (3, "SystemExit")):
        state = states[index]
        detail = ": 3" if name == "SystemExit" else ""
        ending = f"was ended by {name}{detail}, a BaseException, before it could finish."
        assert str(state.message).endswith(ending), state.message
        assert name in f"{type(state.error).__name__}: {state.error}", repr(state.error)
        with pytest.raises(CrashedRun):
            state.result()
    report.record(
        "KeyboardInterrupt/SystemExit in a task",
        runner_name,
        runs=len(hows) + 1,
        crashed=sum(s.is_crashed() for s in states),
        messages=[str(states[1].message), str(states[3].message)],
    )
