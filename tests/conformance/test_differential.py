"""Same program, same states, on every runner: a set of small flows (failures, retries,
nesting, timeouts, upstream failures, allow_failure, async, a failing subtask nobody
read...) run on each selected runner, and the final state types and names of their runs
and of the flow compared across runners.

The runners come from ``BATON_DIFFERENTIAL_RUNNERS`` (comma-separated; by default
``BATON_RELIABILITY_RUNNERS``, else ``thread,sync,process``); ``thread``, the reference,
is always among them. The dask and ray environments of tox select their runner, on the
clusters the reliability suite uses. Print the table (programs x runners, Markdown)::

    python tests/conformance/test_differential.py            # the default runners
    BATON_DIFFERENTIAL_RUNNERS=process python tests/conformance/test_differential.py
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import pytest
from baton import Capability, FlowRunFailed, State, TaskRunner, allow_failure, flow, task
from baton.testing._rendezvous import Rendezvous
from baton.testing._tasks import (
    async_add,
    async_fail,
    countdown,
    describe,
    echo,
    exit_counted,
    fail,
    fire_and_forget,
    flaky,
    inc,
    stoppable,
)

RELIABILITY = Path(__file__).resolve().parents[1] / "reliability" / "reliability_support.py"
REFERENCE = "thread"
ENV = "BATON_DIFFERENTIAL_RUNNERS"

Observations = dict[str, str]


def _support() -> ModuleType:
    """The reliability suite's runner and cluster helpers, loaded once by path."""
    module = sys.modules.get("reliability_support")
    if module is not None:
        return module
    spec = importlib.util.spec_from_file_location("reliability_support", RELIABILITY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["reliability_support"] = module
    spec.loader.exec_module(module)
    return module


def selected_runners() -> tuple[str, ...]:
    raw = os.environ.get(ENV) or os.environ.get("BATON_RELIABILITY_RUNNERS", "")
    names = [n.strip() for n in raw.split(",") if n.strip()] or ["thread", "sync", "process"]
    known = _support().KNOWN_RUNNERS
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"{ENV} names {', '.join(unknown)}; the test knows {', '.join(known)}")
    return tuple(dict.fromkeys([REFERENCE, *names]))


def _seen(state: State) -> str:
    """The state's type, and its name where it is not the type's own (``FAILED/TimedOut``)."""
    kind = state.type.value
    return kind if state.name == kind.title() else f"{kind}/{state.name}"


@task
def returns_failed_state(message: str) -> State:
    """Returns a failed State: the run ends in it, as in Prefect."""
    return State.failed(ValueError(message), message)


@task
def yields_items(n: int) -> Iterator[int]:
    """A generator task: its body runs inside the run, the items are the result."""
    yield from range(n)


@task
def returns_a_future(x: int) -> object:
    """Returns the future of a run it submitted: the run ends with that run's result."""
    return inc.submit(x)


@dataclass(frozen=True)
class Program:
    name: str
    body: Callable[[Rendezvous, Observations], None]
    requires: frozenset[Capability] = field(default_factory=frozenset)

    def __str__(self) -> str:
        return self.name


def _failure(rv: Rendezvous, seen: Observations) -> None:
    future = fail.submit("boom")
    future.wait()
    seen["run"] = _seen(future.state)


def _unhandled_failure(rv: Rendezvous, seen: Observations) -> None:
    fail.submit("nobody looks")


def _retries(rv: Rendezvous, seen: Observations) -> None:
    passed = flaky.with_options(retries=2).submit(rv, "passed", 1)
    used_up = flaky.with_options(retries=1).submit(rv, "used-up", 5)
    for label, future in (("passed", passed), ("used up", used_up)):
        future.wait()
        seen[label] = _seen(future.state)
    seen["attempts"] = f"{len(rv.records('attempt-passed'))}+{len(rv.records('attempt-used-up'))}"


def _map_with_a_failure(rv: Rendezvous, seen: Observations) -> None:
    futures = [fail.submit("one") if i == 2 else inc.submit(i) for i in range(4)]
    for i, future in enumerate(futures):
        future.wait()
        seen[f"run {i}"] = _seen(future.state)


def _nesting(rv: Rendezvous, seen: Observations) -> None:
    future = countdown.submit(4)
    future.wait()
    seen["run"] = f"{_seen(future.state)}={future.result(raise_on_failure=False)}"


def _fire_and_forget(rv: Rendezvous, seen: Observations) -> None:
    parent = fire_and_forget.submit("nobody reads this")
    parent.wait()
    seen["parent"] = _seen(parent.state)


def _timeout(rv: Rendezvous, seen: Observations) -> None:
    future = stoppable.with_options(timeout_seconds=0.5).submit(rv, "slow")
    future.wait()
    rv.signal("release-slow")
    seen["run"] = _seen(future.state)


def _upstream_failure(rv: Rendezvous, seen: Observations) -> None:
    upstream = fail.submit("up")
    downstream = inc.submit(upstream)
    after = echo.submit(1, wait_for=[downstream])
    for label, future in (("upstream", upstream), ("downstream", downstream), ("after", after)):
        future.wait()
        seen[label] = _seen(future.state)


def _allow_failure(rv: Rendezvous, seen: Observations) -> None:
    failed = fail.submit("up")
    future = describe.submit(allow_failure(failed))
    future.wait()
    seen["run"] = f"{_seen(future.state)}={future.result(raise_on_failure=False)}"


def _async(rv: Rendezvous, seen: Observations) -> None:
    added = async_add.submit(1, 2)
    failed = async_fail.submit("async boom")
    for label, future in (("added", added), ("failed", failed)):
        future.wait()
        seen[label] = _seen(future.state)


def _base_exception(rv: Rendezvous, seen: Observations) -> None:
    future = exit_counted.with_options(retries=1).submit(rv, "exit", "SystemExit")
    future.wait()
    seen["run"] = _seen(future.state)
    seen["attempts"] = str(len(rv.records("attempt-exit")))


def _returns_failed_state(rv: Rendezvous, seen: Observations) -> None:
    future = returns_failed_state.submit("as a value")
    future.wait()
    value = future.result(raise_on_failure=False)
    seen["run"] = _seen(future.state)
    seen["value"] = _seen(value) if isinstance(value, State) else repr(value)


def _generator(rv: Rendezvous, seen: Observations) -> None:
    future = yields_items.submit(3)
    future.wait()
    seen["run"] = _seen(future.state)
    seen["value"] = repr(future.result(raise_on_failure=False))


def _returned_future(rv: Rendezvous, seen: Observations) -> None:
    future = returns_a_future.submit(41)
    future.wait()
    seen["run"] = _seen(future.state)
    seen["value"] = repr(future.result(raise_on_failure=False))


PROGRAMS = (
    Program("a raising task", _failure),
    Program("a failure nobody looked at", _unhandled_failure),
    Program("retries", _retries),
    Program("runs with one failure", _map_with_a_failure),
    Program("nested runs", _nesting, frozenset({Capability.NESTED})),
    Program("a failing subtask nobody read", _fire_and_forget, frozenset({Capability.NESTED})),
    Program("a timeout", _timeout),
    Program("upstream failures", _upstream_failure),
    Program("allow_failure", _allow_failure),
    Program("async runs", _async, frozenset({Capability.ASYNC})),
    Program("SystemExit in a task", _base_exception),
    Program("a task returning a failed State", _returns_failed_state),
    Program("a generator task", _generator),
    Program("a task returning a future", _returned_future, frozenset({Capability.NESTED})),
)


def run_program(program: Program, runner: TaskRunner, directory: Path) -> Observations:
    """Run `program` as a flow on the started `runner`: what each of its runs and the flow
    ended as."""
    missing = program.requires - frozenset(runner.capabilities)
    if missing:
        return {"n/a": f"does not declare {', '.join(sorted(map(str, missing)))}"}
    rv = Rendezvous(directory)
    seen: Observations = {}
    body = flow(name=f"differential-{program.name}", task_runner=runner)(
        lambda: program.body(rv, seen)
    )
    try:
        state = body(return_state=True)
    finally:
        rv.abort()
    seen["flow"] = _seen(state)
    if isinstance(state.error, FlowRunFailed):
        seen["flow error"] = "FlowRunFailed"
    return seen


@contextlib.contextmanager
def started(name: str) -> Iterator[TaskRunner]:
    support = _support()
    with support.cluster_for(name) as cluster:
        runner = support.build_runner(name, cluster).start()
        try:
            yield runner
        finally:
            runner.shutdown(wait=True)


def run_all(names: tuple[str, ...], scratch: Path) -> dict[str, dict[str, Observations]]:
    """program -> runner -> observations."""
    table: dict[str, dict[str, Observations]] = {p.name: {} for p in PROGRAMS}
    for name in names:
        with started(name) as runner:
            for index, program in enumerate(PROGRAMS):
                directory = scratch / f"{name}-{index}"
                directory.mkdir()
                try:
                    table[program.name][name] = run_program(program, runner, directory)
                except Exception as exc:  # shown in the table, and a difference
                    table[program.name][name] = {"error": f"{type(exc).__name__}: {exc}"}
    return table


def cell(observations: Observations) -> str:
    return "; ".join(f"{k} {v}" for k, v in observations.items()).replace("|", "\\|")


def render(table: dict[str, dict[str, Observations]], names: tuple[str, ...]) -> str:
    """Programs x runners as a Markdown table; rows that differ are marked."""
    lines = [
        "| program | " + " | ".join(names) + " |",
        "| --- |" + " --- |" * len(names),
    ]
    for program, row in table.items():
        mark = "" if _agree(row) else " **(differs)**"
        cells = [cell(row.get(n, {"missing": "not run"})) for n in names]
        lines.append(f"| {program}{mark} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _agree(row: dict[str, Observations]) -> bool:
    ran = [o for o in row.values() if "n/a" not in o]
    return all(o == ran[0] for o in ran)


RUNNERS = selected_runners()


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Observations]]:
    result = run_all(RUNNERS, tmp_path_factory.mktemp("differential"))
    print("\n" + render(result, RUNNERS))  # shown with pytest -s
    return result


@pytest.mark.parametrize("program", PROGRAMS, ids=str)
def test_same_program_same_states_on_every_runner(
    program: Program, table: dict[str, dict[str, Observations]]
) -> None:
    row = table[program.name]
    reference = row[REFERENCE]
    differing = [n for n, o in row.items() if "n/a" not in o and o != reference]
    assert not differing, (
        f"program {program.name!r} ended differently on {', '.join(differing)} than on "
        f"{REFERENCE}:\n\n{render(table, RUNNERS)}"
    )


def test_the_programs_end_as_documented(table: dict[str, dict[str, Observations]]) -> None:
    """The reference runner's table is the documented semantics, so that every runner
    agreeing on a wrong outcome still fails."""
    on = {program: row[REFERENCE] for program, row in table.items()}
    assert on["a failure nobody looked at"] == {"flow": "FAILED", "flow error": "FlowRunFailed"}
    assert on["a failing subtask nobody read"] == {
        "parent": "COMPLETED",
        "flow": "FAILED",
        "flow error": "FlowRunFailed",
    }
    assert on["retries"] == {
        "passed": "COMPLETED",
        "used up": "FAILED",
        "attempts": "2+2",
        "flow": "COMPLETED",
    }
    assert on["a timeout"]["run"] == "FAILED/TimedOut"
    assert on["upstream failures"]["after"] == "FAILED/UpstreamFailed"
    assert on["allow_failure"]["run"] == "COMPLETED=KitError: up"
    assert on["SystemExit in a task"] == {"run": "CRASHED", "attempts": "1", "flow": "COMPLETED"}
    assert on["a generator task"] == {"run": "COMPLETED", "value": "[0, 1, 2]", "flow": "COMPLETED"}
    assert on["a task returning a future"] == {
        "run": "COMPLETED",
        "value": "42",
        "flow": "COMPLETED",
    }
    assert on["a task returning a failed State"] == {
        "run": "FAILED",
        "value": "ValueError('as a value')",
        "flow": "COMPLETED",
    }


def test_a_difference_is_marked_in_the_table() -> None:
    table = {
        "same": {"thread": {"run": "FAILED"}, "sync": {"run": "FAILED"}},
        "not the same": {"thread": {"run": "COMPLETED"}, "sync": {"run": "CRASHED"}},
        "not applicable": {"thread": {"run": "CRASHED"}, "sync": {"n/a": "does not declare x"}},
    }
    assert render(table, ("thread", "sync")).splitlines() == [
        "| program | thread | sync |",
        "| --- | --- | --- |",
        "| same | run FAILED | run FAILED |",
        "| not the same **(differs)** | run COMPLETED | run CRASHED |",
        "| not applicable | run CRASHED | n/a does not declare x |",
    ]


def main() -> None:
    import tempfile

    os.environ.setdefault("BATON_LOG_LEVEL", "CRITICAL")  # the table, not the runs' logs
    with tempfile.TemporaryDirectory(prefix="baton-differential-") as scratch:
        print(render(run_all(RUNNERS, Path(scratch)), RUNNERS))


if __name__ == "__main__":
    main()
