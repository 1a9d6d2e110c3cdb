"""examples/seeds/*.py, examples/demo.py and the README's example run as plain scripts
and print what they should.

Prints are checked on stdout and the `baton` logger's lines on stderr, modulo the
parts that change from run to run: flow run names, task run name suffixes, timings,
the order of runs that are meant to run concurrently, and the order of task run
lines (each is logged once its run's final state is reported, which can come just
after a run that waited for it has already gone on).
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import baton
import pytest

REPO = Path(__file__).resolve().parents[1]
SEEDS = REPO / "examples" / "seeds"
SCRIPT_TIMEOUT = 60

LOG_LINE = re.compile(r"^\d{2}:\d{2}:\d{2}\.\d{3} \| (?P<padded>[A-Z ]{7}) \| (?P<message>.*)$")
FLOW_RUN_NAME = r"[a-z]+-[a-z]+"
TASK_LINE = re.compile(r"^Task run '(?P<name>.+)' - Finished in state (?P<state>.+)$")
COMPLETED = "Completed()"


@dataclass(frozen=True)
class LogLine:
    level: str
    message: str


@dataclass(frozen=True)
class ScriptRun:
    stdout: str
    logs: list[LogLine]

    def task_lines(self) -> list[tuple[str, str]]:
        """(task run name, final state) of every task run line, in the order logged."""
        found = []
        for line in self.logs:
            match = TASK_LINE.match(line.message)
            if match:
                found.append((match["name"], match["state"]))
        return found


def run_script(path: Path) -> ScriptRun:
    """Run `path` as a script from the repository root; it must exit 0 and write only
    log lines to stderr (no traceback, no warning)."""
    assert path.is_file(), f"{path.relative_to(REPO)} is missing"
    env = dict(os.environ)
    # Check what a user sees with the default log settings, whatever the caller's shell set.
    env.pop("BATON_TASK_RUN_LOG_LIMIT", None)
    env["BATON_LOG_LEVEL"] = "INFO"
    env["PYTHONUNBUFFERED"] = "1"
    proc = subprocess.run(
        [sys.executable, str(path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        timeout=SCRIPT_TIMEOUT,
        check=False,
    )
    # Decoded by hand: text mode would turn the "\r" that some examples print into "\n".
    stdout, stderr = proc.stdout.decode(), proc.stderr.decode()
    assert proc.returncode == 0, (
        f"{path.name} exited with {proc.returncode}\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    )
    logs = []
    for raw in stderr.splitlines():
        match = LOG_LINE.match(raw)
        assert match, f"{path.name}: stderr line is not a log line: {raw!r}\n{stderr}"
        logs.append(LogLine(match["padded"].strip(), match["message"]))
    return ScriptRun(stdout, logs)


def assert_flow_run(run: ScriptRun, flow_name: str) -> None:
    """The first line begins a run of `flow_name` under a generated name; the last one
    ends that same run in Completed()."""
    assert run.logs, "no log lines"
    first = re.fullmatch(
        rf"Flow run '(?P<run>{FLOW_RUN_NAME})' - Beginning flow run '(?P=run)' "
        rf"for flow '{re.escape(flow_name)}'",
        run.logs[0].message,
    )
    assert first, run.logs[0]
    assert run.logs[-1] == LogLine(
        "INFO", f"Flow run '{first['run']}' - Finished in state {COMPLETED}"
    )


def assert_completed_tasks(run: ScriptRun, task_name: str, count: int) -> list[str]:
    """Exactly `count` task run lines, all Completed(), named `<task_name>-xxx`."""
    names = [name for name, _ in run.task_lines()]
    assert len(names) == count, run.task_lines()
    for name, state in run.task_lines():
        assert re.fullmatch(rf"{re.escape(task_name)}-[0-9a-f]{{3}}", name), name
        assert state == COMPLETED, (name, state)
    assert len(set(names)) == count, f"task run names repeat: {names}"
    return names


def task_counts(run: ScriptRun) -> Counter[str]:
    """How many task run lines each task has (run names without their `-xxx` suffix)."""
    return Counter(re.sub(r"-[0-9a-f]{3}$", "", name) for name, _ in run.task_lines())


def assert_all_completed(run: ScriptRun) -> None:
    lines = run.task_lines()
    assert lines, "no task run lines"
    assert all(state == COMPLETED for _, state in lines), lines


def printed(stdout: str, pattern: str, end: str) -> list[str]:
    """The values printed as `print(value, end=end)`, in the order written.

    `print` writes the value and then `end`; two threads printing at once can
    interleave those writes ("AAAABBBB\\r\\r"), so values are found by pattern and
    what remains must be exactly one `end` per value.
    """
    values = re.findall(pattern, stdout)
    assert re.sub(pattern, "", stdout) == end * len(values), stdout
    return values


# -- the checks, one per script -------------------------------------------------------


def check_parallel_flow(run: ScriptRun) -> None:
    assert Counter(printed(run.stdout, "AAAA|BBBB", "\r")) == {"AAAA": 15, "BBBB": 10}
    assert_flow_run(run, "parallel-flow")
    assert_completed_tasks(run, "print_values", 2)


def check_async_flow(run: ScriptRun) -> None:
    # The two gathered runs take turns at every await: a then 6, b then 7, ...
    assert run.stdout == "1 2 a 6 b 7 c 8 d 9 "
    assert_flow_run(run, "async-flow")
    assert_completed_tasks(run, "print_values", 3)


def check_calling_tasks_directly(run: ScriptRun) -> None:
    # Each call blocks until its task is done, so the lines never interleave.
    assert run.stdout.splitlines() == [
        f"elevator {verb} floor {floor}"
        for floor in (0.1, 0.2, 0.3)
        for verb in ("moving to", "stops on")
    ]


def check_elevator(run: ScriptRun) -> None:
    lines = printed(run.stdout, r"elevator (?:moving to|stops on) floor \d+", "\n")
    floors = range(1, 11)
    assert sorted(lines) == sorted(
        f"elevator {verb} floor {floor}" for floor in floors for verb in ("moving to", "stops on")
    )
    for floor in floors:
        moving = lines.index(f"elevator moving to floor {floor}")
        assert moving < lines.index(f"elevator stops on floor {floor}"), lines
    assert_flow_run(run, "elevator")
    assert_completed_tasks(run, "stop_at_floor", 10)


def check_future_result(run: ScriptRun) -> None:
    assert run.stdout == "sup\n"
    assert_flow_run(run, "my-workflow")
    assert_completed_tasks(run, "cool_task", 1)


def check_future_wait(run: ScriptRun) -> None:
    assert run.stdout == ""
    assert_flow_run(run, "my-workflow")
    assert_completed_tasks(run, "cool_task", 1)


def check_wait_for_many_futures(run: ScriptRun) -> None:
    assert run.stdout == ""
    assert_flow_run(run, "my-workflow")
    assert_completed_tasks(run, "cool_task", 10)


def check_pass_future_to_task(run: ScriptRun) -> None:
    assert run.stdout == "cool task said sup\n"
    assert_flow_run(run, "my-workflow")
    assert_all_completed(run)
    assert task_counts(run) == {"cool_task": 1, "what_did_cool_task_say": 1}


def check_map_static_value(run: ScriptRun) -> None:
    assert run.stdout == ""  # the script's own assert checks the sums
    assert_flow_run(run, "sum-it")
    assert_completed_tasks(run, "add_together", 3)


def check_map_unmapped_iterable(run: ScriptRun) -> None:
    assert run.stdout == ""  # the script's own assert checks the sums
    assert_flow_run(run, "sum-it")
    assert_completed_tasks(run, "sum_plus", 3)


def check_bulk_result(run: ScriptRun) -> None:
    assert run.stdout == "[10, 20, 30]\n"


def check_nested_mapped_tasks(run: ScriptRun) -> None:
    assert run.stdout == (
        "\nAnalysis Results:\n"
        "  Word counts: [9, 11, 10]\n"
        "  Extracted emails: [['visitor@example.com'], ['developer@example.com'], "
        "['events@company.org']]\n\n"
    )
    assert_flow_run(run, "run-text-analysis")
    assert_all_completed(run)
    assert task_counts(run) == {"count_words": 3, "extract_emails": 3, "analyze_texts": 1}


def check_state_dependencies(run: ScriptRun) -> None:
    assert run.stdout == ""
    assert_flow_run(run, "my-flow")
    assert_all_completed(run)
    assert task_counts(run) == {"task_a": 1, "task_b": 1, "task_c": 1, "task_d": 1}


def check_batch_processing_failures(run: ScriptRun) -> None:
    assert run.stdout == "Processed 3 items successfully\nFailed to process 2 items\n"
    # The failures were looked at (through .state), so they do not fail the flow.
    assert_flow_run(run, "batch-processing")
    lines = run.task_lines()
    assert len(lines) == 5, lines
    assert all(re.fullmatch(r"process_data-[0-9a-f]{3}", name) for name, _ in lines), lines
    assert sorted(state for _, state in lines) == [COMPLETED] * 3 + [
        "Failed('ValueError: Cannot process negative value: -2')",
        "Failed('ValueError: Cannot process negative value: -4')",
    ]
    failed = [line for line in run.logs if "Failed(" in line.message]
    assert [line.level for line in failed] == ["ERROR", "ERROR"]


def check_evaluate_models(run: ScriptRun) -> None:
    datasets, models = ("customers", "products", "orders"), ("random_forest", "gradient_boosting")
    assert_flow_run(run, "evaluate-models")
    assert sorted(run.task_lines()) == sorted(
        (f"train on {dataset} with {model}", COMPLETED) for dataset in datasets for model in models
    )
    match = re.fullmatch(r"\nBest model: (?P<best>\{.*\})\n", run.stdout)
    assert match, run.stdout
    best = ast.literal_eval(match["best"])
    assert set(best) == {"dataset", "model", "score"}
    assert best["dataset"] in datasets
    assert best["model"] in models
    assert 0 <= best["score"] < 1


@dataclass(frozen=True)
class Example:
    check: Callable[[ScriptRun], None]
    runner: str | None = None  # a runner that must be installed for the script to run


EXAMPLES: dict[str, Example] = {
    # flow execution
    "parallel_flow.py": Example(check_parallel_flow),
    "async_flow.py": Example(check_async_flow),
    # run work concurrently
    "calling_tasks_directly.py": Example(check_calling_tasks_directly),
    "elevator_submit.py": Example(check_elevator),
    "elevator_dask.py": Example(check_elevator, runner="dask"),
    "future_result.py": Example(check_future_result),
    "future_wait.py": Example(check_future_wait),
    "wait_for_many_futures.py": Example(check_wait_for_many_futures),
    "pass_future_to_task.py": Example(check_pass_future_to_task),
    "elevator_map.py": Example(check_elevator),
    "map_static_value.py": Example(check_map_static_value),
    "map_unmapped_iterable.py": Example(check_map_unmapped_iterable),
    "bulk_result.py": Example(check_bulk_result),
    "bulk_result_comprehension.py": Example(check_bulk_result),
    "nested_mapped_tasks.py": Example(check_nested_mapped_tasks),
    "state_dependencies.py": Example(check_state_dependencies),
    "batch_processing_failures.py": Example(check_batch_processing_failures),
    "elevator_asyncio.py": Example(check_elevator),
    "evaluate_models.py": Example(check_evaluate_models),
}


def test_every_script_is_checked() -> None:
    on_disk = {path.name for path in SEEDS.glob("*.py")}
    assert on_disk - EXAMPLES.keys() == set(), "scripts without a check in EXAMPLES"
    assert EXAMPLES.keys() - on_disk == set(), "scripts missing from examples/seeds"


@pytest.mark.parametrize("script", sorted(EXAMPLES))
def test_example_runs_and_prints_what_the_page_shows(script: str) -> None:
    example = EXAMPLES[script]
    if example.runner is not None:
        installed = [runner.name for runner in baton.list_runners()]
        if example.runner not in installed:
            pytest.skip(
                f"the {example.runner!r} runner is not installed (installed runners: "
                f'{", ".join(installed)}); pip install "baton-core[{example.runner}]" adds it'
            )
    example.check(run_script(SEEDS / script))


@pytest.mark.parametrize(
    ("script", "expected"),
    [("map_static_value.py", [6, 7, 8]), ("map_unmapped_iterable.py", [10, 11, 12])],
)
def test_sum_it_returns_the_mapped_results(script: str, expected: list[int]) -> None:
    # The script's flow result, read back from its globals after it ran as __main__.
    driver = (
        "import runpy, sys; "
        "print(repr(runpy.run_path(sys.argv[1], run_name='__main__')['resulting_sum']))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", driver, str(SEEDS / script)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"{expected!r}\n"


def test_calling_a_task_outside_a_flow_blocks_and_returns_its_result(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import runpy

    namespace = runpy.run_path(str(SEEDS / "calling_tasks_directly.py"))
    capsys.readouterr()
    stop_at_floor = namespace["stop_at_floor"]
    assert isinstance(stop_at_floor, baton.Task)

    returned = stop_at_floor(0.1)

    # The last line the task prints is already out when the call returns: it blocked
    # until the task was done, and handed back the function's own return value.
    assert returned is None
    assert capsys.readouterr().out == "elevator moving to floor 0.1\nelevator stops on floor 0.1\n"


def test_demo_runs_and_prints_the_total() -> None:
    run = run_script(REPO / "examples" / "demo.py")
    pages = 8
    expected_total = sum(range(pages * 10))  # fetch(page) returns page*10 .. page*10+9
    # What the line claims holds on any machine: no number of runs at once, which the
    # thread runner's pool (sized by the CPUs) decides, only the work and its time.
    assert re.fullmatch(
        rf"total = {expected_total} in \d+\.\d\d s "
        rf"\({pages} fetches of 0\.2 s each, 1\.60 s if run one after another\)\n",
        run.stdout,
    ), run.stdout
    assert_flow_run(run, "demo")
    assert_all_completed(run)
    assert task_counts(run) == {"fetch": pages, "total": 1}


def test_demo_claims_no_number_of_runs_at_once() -> None:
    # The thread runner runs min(32, CPUs + 4) at a time by default: "8 at once" is
    # false on a machine with fewer than 4 CPUs, so the demo states no such number.
    source = (REPO / "examples" / "demo.py").read_text()
    assert not re.search(r"\b\d+ (?:runs? )?at (?:once|a time)", source), source
    assert "run concurrently" not in source


def readme_python_blocks() -> list[str]:
    text = (REPO / "README.md").read_text()
    return re.findall(r"^```python\n(.*?)^```$", text, flags=re.MULTILINE | re.DOTALL)


def test_readme_example_runs_and_uses_every_name_it_imports() -> None:
    [code] = readme_python_blocks()
    tree = ast.parse(code)
    imported = {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    used = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    used |= {
        node.value.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
    }
    assert imported - used == set(), "the README imports names its example never uses"
    # Run as a script of its own; its assert checks the result.
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
