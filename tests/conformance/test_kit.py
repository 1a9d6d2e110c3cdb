"""The conformance kit itself: its contract, its gating, its reports and its command."""

from __future__ import annotations

import importlib.metadata
import inspect
import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import baton.testing
import pytest
from baton import Capability, UnknownRunnerError, get_runner
from baton.testing import LATEST_LEVEL, RunnerConformance, check_runner
from baton.testing._kit import conformance_tests
from baton.testing._rendezvous import Rendezvous, RendezvousTimeout
from broken_runners import (
    ForgetfulRunner,
    LyingRunner,
    RandomChurningRunner,
    SilentRunner,
    SoftTimeoutRunner,
    SwallowingRunner,
)

HERE = Path(__file__).resolve().parent


def run_pytest(directory: Path, source: str, *args: str) -> dict[str, Any]:
    """Run pytest on a test module made of `source`; the outcome as the kit records it."""
    module = directory / "test_generated.py"
    module.write_text(textwrap.dedent(source))
    (directory / "pytest.ini").write_text("[pytest]\n")
    outcome = directory / "outcome.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            str(module),
            "-c",
            str(directory / "pytest.ini"),
            "-p",
            "baton.testing._report",
            f"--baton-conformance-report={outcome}",
            "-p",
            "no:cacheprovider",
            *args,
        ],
        cwd=directory,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    document: dict[str, Any] = json.loads(outcome.read_text())
    document["output"] = done.stdout + done.stderr
    return document


# -- the tests of the kit ------------------------------------------------------------------


def test_the_kit_has_at_least_fifty_tests_each_with_its_needs() -> None:
    tests = conformance_tests()
    assert len(tests) >= 50
    for name in dir(RunnerConformance):
        if name.startswith("test_"):
            assert name in tests, f"{name} has no @conformance(...)"
            parameters = inspect.signature(getattr(RunnerConformance, name)).parameters
            assert "kit" in parameters, f"{name} does not use the kit fixture"
    assert all(1 <= spec.level <= LATEST_LEVEL for spec in tests.values())


def test_every_capability_has_tests() -> None:
    required = {c for spec in conformance_tests().values() for c in spec.requires}
    assert required == set(Capability)


def test_public_api() -> None:
    assert baton.testing.__all__ == ["LATEST_LEVEL", "Report", "RunnerConformance", "check_runner"]
    for name in baton.testing.__all__:
        assert getattr(baton.testing, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        baton.testing.nope  # noqa: B018


def test_the_kit_is_not_a_pytest_plugin_of_every_run() -> None:
    entry_points = importlib.metadata.distribution("baton-core").entry_points
    assert not [ep for ep in entry_points if ep.group == "pytest11"]


def test_workers_import_the_tasks_without_pytest() -> None:
    code = (
        "import sys, baton.testing._tasks; "
        "print('pytest' in sys.modules, 'hypothesis' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.split() == ["False", "False"]


def test_rendezvous_travels_and_names_who_never_came(tmp_path: Path) -> None:
    rv = pickle.loads(pickle.dumps(Rendezvous(tmp_path)))
    assert rv.directory == str(tmp_path)
    with pytest.raises(RendezvousTimeout, match=r"run 'a' waited 0.05 s for 'b' to be running"):
        rv.meet("a", ("a", "b"), timeout=0.05)
    with pytest.raises(ValueError, match="plain file names"):
        rv.signal("../elsewhere")


# -- subclass contract ---------------------------------------------------------------------


def test_known_failures_must_name_tests_of_the_kit() -> None:
    with pytest.raises(TypeError, match=r"known_failures names 'test_nope', which is not a test"):

        class TestTypo(RunnerConformance):
            known_failures = {"test_nope": "a typo"}


@pytest.mark.parametrize("level", [0, LATEST_LEVEL + 1, "1", True])
def test_conformance_level_is_checked(level: object) -> None:
    with pytest.raises(TypeError, match="conformance_level"):
        type("TestBadLevel", (RunnerConformance,), {"conformance_level": level})


def test_a_missing_or_started_runner_fixture_is_a_clear_error(tmp_path: Path) -> None:
    document = run_pytest(
        tmp_path,
        """
        import pytest
        from baton import get_runner
        from baton.testing import RunnerConformance

        class TestNoFixture(RunnerConformance):
            pass

        class TestStarted(RunnerConformance):
            @pytest.fixture
            def runner(self):
                return get_runner("sync").start()
        """,
        "-k",
        "test_map_over_futures",
    )
    output = document["output"]
    assert "TestNoFixture must define the fixture that builds the runner" in output
    assert "returned a runner that is already started" in output
    assert document["exit_code"] == 1


def test_tests_above_the_pinned_level_are_skipped(tmp_path: Path) -> None:
    document = run_pytest(
        tmp_path,
        """
        import pytest
        from baton import get_runner
        from baton.testing import RunnerConformance
        from baton.testing._spec import Spec

        def added_later(self, kit):
            raise AssertionError("a level-2 test ran at level 1")

        added_later.__baton_conformance__ = Spec(2, frozenset(), {}, False, False)

        class TestPinned(RunnerConformance):
            conformance_level = 1
            test_added_later = added_later

            @pytest.fixture
            def runner(self):
                return get_runner("sync")
        """,
        "-k",
        "test_added_later or test_map_over_futures",
    )
    tests = document["tests"]
    assert tests["test_added_later"]["outcome"] == "skipped"
    assert tests["test_added_later"]["reason"] == (
        "added at conformance level 2; set conformance_level = 2 on TestPinned to run it"
    )
    assert tests["test_map_over_futures"]["outcome"] == "passed"


# -- check_runner and its report -----------------------------------------------------------


def test_skips_name_the_runner_and_the_capability() -> None:
    report = check_runner(
        "sync",
        pytest_args=[
            "-k",
            "test_runs_execute_in_another_process or test_a_dying_worker_ends_the_run_crashed "
            "or test_two_submitted_runs_are_in_flight_at_once or test_map_over_futures",
        ],
    )
    assert report.ok, report.output
    assert (report.passed, report.skipped, report.failed) == (1, 3, 0)
    assert report.reasons["test_runs_execute_in_another_process"] == (
        "runner 'sync' does not declare capability 'processes'"
    )
    assert report.skipped_capabilities == {"processes": 1, "crash-detection": 1}
    assert report.reasons["test_two_submitted_runs_are_in_flight_at_once"].startswith(
        "runner 'sync' ran a submitted run inside submit()"
    )
    summary = report.summary()
    assert "runner `sync` passes" in summary
    assert "| 1 | 3 | 0 | 0 | 0 |" in summary
    assert "- Skipped, capability not declared: crash-detection (1), processes (1)" in summary
    assert (report.runner, report.runner_class) == ("sync", "baton._runners.sync.SyncRunner")
    assert report.capabilities == ("async", "limits", "nested", "priorities", "resources")


def test_a_runner_that_swallows_failures_fails_naming_the_rule() -> None:
    report = check_runner(
        SwallowingRunner,
        pytest_args=["-k", "test_a_raising_task_ends_failed or test_submit_returns_a_future"],
    )
    assert not report.ok
    assert report.exit_code == 1
    assert report.outcomes == {
        "test_a_raising_task_ends_failed_with_its_exception": "failed",
        "test_submit_returns_a_future_with_the_result": "passed",
    }
    [reason] = report.failures.values()
    assert "rule: a task that raises an Exception ends FAILED, not COMPLETED" in reason
    assert "runner `swallowing` FAILS" in report.summary()
    assert "- Failed: `test_a_raising_task_ends_failed_with_its_exception`: " in report.summary()


def test_known_failures_are_reported_as_expected() -> None:
    report = check_runner(
        SwallowingRunner,
        known_failures={"test_a_raising_task_ends_failed_with_its_exception": "swallows errors"},
        pytest_args=["-k", "test_a_raising_task_ends_failed"],
    )
    assert report.ok, report.output
    assert (report.xfailed, report.failed) == (1, 0)
    assert "- Known failure: `test_a_raising_task_ends_failed_with_its_exception`: swallows" in (
        report.summary()
    )


def test_a_runner_declaring_capabilities_it_lacks_fails() -> None:
    report = check_runner(
        LyingRunner,
        pytest_args=["-k", "test_cancel_stops_a_running_run or test_runs_execute_in_another"],
    )
    assert report.failures.keys() == {
        "test_cancel_stops_a_running_run",
        "test_runs_execute_in_another_process",
    }
    assert (
        "runner.cancel(run) of a running run is True"
        in (report.failures["test_cancel_stops_a_running_run"])
    )
    assert (
        "runs tasks outside the calling process"
        in (report.failures["test_runs_execute_in_another_process"])
    )


def test_a_thread_runner_declaring_hard_timeouts_fails() -> None:
    report = check_runner(
        SoftTimeoutRunner,
        pytest_args=["-k", "test_a_hard_timeout_stops_the_work or stops_work_blocked_in_c"],
    )
    # Work that polls in Python stops at an exception raised in its thread...
    assert report.outcomes["test_a_hard_timeout_stops_the_work"] == "passed", report.output
    # ...work blocked in a C call does not: only stopping the worker stops it.
    assert report.failures.keys() == {"test_a_hard_timeout_stops_work_blocked_in_c"}, report.output
    assert (
        "the socket it held was still open"
        in (report.failures["test_a_hard_timeout_stops_work_blocked_in_c"])
    )


def test_a_runner_that_drops_failed_subtasks_fails() -> None:
    report = check_runner(
        ForgetfulRunner,
        pytest_args=["-k", "test_a_failing_subtask_nobody_read or test_map_over_futures"],
    )
    assert report.outcomes == {
        "test_a_failing_subtask_nobody_read_fails_the_flow": "failed",
        "test_map_over_futures": "passed",
    }, report.output
    assert (
        "rule: a subtask's failure that nobody handled fails the flow"
        in (report.failures["test_a_failing_subtask_nobody_read_fails_the_flow"])
    )


def test_a_runner_that_never_reports_running_fails() -> None:
    report = check_runner(
        SilentRunner,
        pytest_args=["-k", "test_an_executing_run_reads_running or test_map_over_futures"],
    )
    assert report.outcomes == {
        "test_an_executing_run_reads_running": "failed",
        "test_map_over_futures": "passed",
    }, report.output
    assert (
        "rule: a run that is executing reads RUNNING in the flow"
        in (report.failures["test_an_executing_run_reads_running"])
    )


def test_a_runner_not_selectable_by_name_skips_the_script_test() -> None:
    report = check_runner(
        lambda: get_runner("sync"),
        pytest_args=["-k", "test_tasks_defined_in_a_scripts_main_run_on_the_runner"],
    )
    assert report.ok, report.output
    assert report.outcomes == {"test_tasks_defined_in_a_scripts_main_run_on_the_runner": "skipped"}
    assert report.reasons["test_tasks_defined_in_a_scripts_main_run_on_the_runner"] == (
        "this test selects the runner by name in a new Python process, and TestConformance "
        "does not say by which name runner 'sync' is selected there: override its "
        "`runner_name` fixture to return the name or URL (as BATON_TASK_RUNNER takes it)"
    )
    assert report.other_skips == {"not selectable by name in a new process": 1}
    by_name = check_runner(
        "sync", pytest_args=["-k", "test_tasks_defined_in_a_scripts_main_run_on_the_runner"]
    )
    assert by_name.ok and by_name.passed == 1, by_name.output


def test_property_tests_tolerate_runner_threads_that_use_random() -> None:
    report = check_runner(
        RandomChurningRunner, pytest_args=["-W", "error", "-k", "match_a_sequential_reference"]
    )
    assert report.ok, report.output
    assert report.passed == 2


def test_check_runner_takes_any_factory() -> None:
    report = check_runner(lambda: get_runner("sync"), pytest_args=["-k", "test_map_over_futures"])
    assert report.ok, report.output
    assert (report.runner, report.passed) == ("sync", 1)


def test_check_runner_refuses_bad_arguments() -> None:
    with pytest.raises(UnknownRunnerError, match="Installed runners: "):
        check_runner("no-such-runner")
    with pytest.raises(ValueError, match=f"level must be a whole number from 1 to {LATEST_LEVEL}"):
        check_runner("sync", level=0)
    with pytest.raises(TypeError, match="takes a runner name"):
        check_runner(42)  # type: ignore[arg-type]


# -- the command ---------------------------------------------------------------------------


def baton_command(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from baton._cli import main; main()", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_baton_conformance_runs_the_kit_and_prints_a_summary() -> None:
    done = baton_command(
        "conformance",
        "sync",
        "-k",
        "test_map_over_futures or test_runs_execute_in_another_process",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed, 1 skipped" in done.stdout  # pytest's own output comes first
    summary = done.stdout[done.stdout.index("Baton conformance kit") :]
    assert summary.startswith(
        f"Baton conformance kit (baton-core {baton.__version__}, level {LATEST_LEVEL} of "
        f"{LATEST_LEVEL}): runner `sync` passes."
    )
    assert "| 1 | 1 | 0 | 0 | 0 |" in summary
    assert "- Skipped, capability not declared: processes (1)" in summary


def test_baton_conformance_of_an_unknown_runner() -> None:
    done = baton_command("conformance", "no-such-runner")
    assert done.returncode == 2
    assert "Unknown task runner 'no-such-runner'. Installed runners:" in done.stderr
    assert "Traceback" not in done.stderr


def test_baton_conformance_checks_the_level() -> None:
    done = baton_command("conformance", "sync", "--level", str(LATEST_LEVEL + 1))
    assert done.returncode == 2
    assert f"the kit has levels 1 to {LATEST_LEVEL}" in done.stderr
