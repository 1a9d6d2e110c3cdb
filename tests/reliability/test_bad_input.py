"""Bad input: every mistake gets an error that says what was wrong and what to do. Each
test asserts the exact message (or its exact shape, where it holds a run's name)."""

from __future__ import annotations

import pickle
import re
import threading
from pathlib import Path
from typing import Any

import pytest
from baton import (
    Future,
    InvalidOptionsError,
    MappingError,
    RunnerClosedError,
    TaskRunner,
    UnknownRunnerError,
    as_completed,
    flow,
    get_runner,
    list_runners,
    task,
    wait,
)
from baton.testing._rendezvous import Rendezvous
from baton.testing._tasks import UnpicklableError, raise_unpicklable, stoppable
from reliability_support import runners
from reliability_tasks import add, inc

RUN_NAME = r"'[a-z_]+-[0-9a-f]{3,}'"


def _installed() -> str:
    return ", ".join(r.name for r in list_runners())


# -- choosing a runner -------------------------------------------------------------------


def test_an_unknown_runner_name_lists_the_installed_runners() -> None:
    expected = (
        f"Unknown task runner 'thraed'. Did you mean 'thread'? Installed runners: {_installed()}."
    )
    with pytest.raises(UnknownRunnerError) as info:
        get_runner("thraed")
    assert str(info.value) == expected

    with pytest.raises(UnknownRunnerError) as info:  # as the flow is defined, not when it runs

        @flow(task_runner="thraed")
        def misspelt() -> None:
            pass

    assert str(info.value) == expected


# -- options -----------------------------------------------------------------------------

TASK_OPTIONS = (
    "batch_size, description, name, on_completion, on_failure, priority, resources, "
    "retries, retry_condition_fn, retry_delay_seconds, retry_jitter_factor, tags, "
    "task_run_name, timeout_seconds"
)


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (
            {"retries": -1},
            "Invalid options for a task:\n"
            "  retries: Input should be greater than or equal to 0 (got -1)",
        ),
        (
            {"timeout_seconds": 0},
            "Invalid options for a task:\n"
            "  timeout_seconds: must be a number of seconds > 0 (a float('inf') or None for "
            "no timeout) (got 0)",
        ),
        (
            {"tags": "etl"},
            "Invalid options for a task:\n  tags: expected a collection of tags such as "
            "['etl'], got a single string (got 'etl')",
        ),
        (
            {"retry": 3},
            f"Invalid options for a task:\n  retry: not an option (options are: {TASK_OPTIONS})",
        ),
    ],
    ids=["retries", "timeout_seconds", "tags", "unknown"],
)
def test_invalid_task_options_name_the_option(options: dict[str, Any], expected: str) -> None:
    with pytest.raises(InvalidOptionsError) as info:
        task(**options)(lambda: None)
    assert str(info.value) == expected


def test_invalid_options_of_a_named_task_name_the_task() -> None:
    with pytest.raises(InvalidOptionsError) as info:
        inc.with_options(retries=1, retry_jitter_factor=-0.5, timeout_seconds="soon")
    assert str(info.value) == (
        "Invalid options for task 'inc':\n"
        "  retry_jitter_factor: Input should be greater than or equal to 0 (got -0.5)\n"
        "  timeout_seconds: Input should be a valid number, unable to parse string as a "
        "number (got 'soon')"
    )


RUNNER_OPTIONS: dict[str, tuple[dict[str, Any], type[Exception], str]] = {
    "thread": (
        {"max_workers": 0},
        InvalidOptionsError,
        "Invalid options for task runner 'thread':\n"
        "  max_workers: must be a whole number >= 1 (got 0)",
    ),
    "sync": (
        {"max_workers": 2},
        TypeError,
        "Task runner 'sync' (SyncRunner) does not accept these options: got an unexpected "
        "keyword argument 'max_workers'. Its options: resources.",
    ),
    "process": (
        {"max_workers": -1, "initargs": 3},
        InvalidOptionsError,
        "Invalid options for task runner 'process':\n"
        "  max_workers: must be a whole number >= 1 (got -1)\n"
        "  initargs: must be a tuple of arguments for the initializer (got 3)",
    ),
    "dask": (
        {"cluster_kwargs": 3},
        InvalidOptionsError,
        "Invalid options for task runner 'dask':\n"
        "  cluster_kwargs: Input should be a valid dictionary (got 3)",
    ),
    "ray": (
        {"max_pending": 0},
        InvalidOptionsError,
        "Invalid options for task runner 'ray':\n"
        "  max_pending: must be a whole number >= 1 (got 0)",
    ),
}


@pytest.mark.parametrize("name", runners())
def test_invalid_runner_options_name_the_option(name: str) -> None:
    options, error, expected = RUNNER_OPTIONS[name]
    with pytest.raises(error) as info:
        get_runner(name, **options)
    assert str(info.value) == expected


@pytest.mark.parametrize("name", runners())
def test_an_option_the_runner_does_not_take_lists_the_ones_it_does(name: str) -> None:
    with pytest.raises(TypeError) as info:
        get_runner(name, max_wokers=2)
    accepted = {
        "thread": "max_workers, resources",
        "sync": "resources",
        "process": "max_workers, initializer, initargs, idle_timeout, resources, batch_size",
        "dask": "address, cluster_class, cluster_kwargs, adapt_kwargs, client_kwargs, "
        "performance_report_path, no_workers_timeout, batch_size",
        "ray": "address, init_kwargs, max_pending, batch_size",
    }[name]
    cls = type(get_runner(name)).__name__
    assert str(info.value) == (
        f"Task runner {name!r} ({cls}) does not accept these options: got an unexpected "
        f"keyword argument 'max_wokers'. Its options: {accepted}."
    )


# -- calls -------------------------------------------------------------------------------


@pytest.mark.parametrize("runner_name", runners(), indirect=True, scope="module")
def test_map_and_submit_refuse_bad_arguments_before_anything_runs(runner: TaskRunner) -> None:
    @flow(task_runner=runner)
    def mistakes() -> list[str]:
        seen: list[str] = []
        for call in (
            lambda: add.map([1, 2, 3], [10, 20]),
            lambda: add.map(1, 2),
            lambda: add.submit(1),
            lambda: add.submit(1, 2, 3),
            lambda: add.submit(1, 2, z=3),
            lambda: add.map([1, 2], [3, 4], z=[5, 6]),
        ):
            with pytest.raises((MappingError, TypeError)) as info:
                call()
            seen.append(str(info.value))
        return seen

    assert mistakes() == [
        "add.map() got iterables of different lengths: x has 3, y has 2. Map over "
        "iterables of the same length, or wrap the ones every run should receive whole "
        "in unmapped(...).",
        "add.map() needs at least one iterable argument to map over, got x=1, y=2. Pass a "
        "list (or other iterable) for the parameter to map over, or call add.submit(...) "
        "for a single run.",
        "add(): missing a required argument: 'y'",
        "add(): too many positional arguments",
        "add(): got an unexpected keyword argument 'z'",
        "add.map(): got an unexpected keyword argument 'z'",
    ]


# -- pickling ----------------------------------------------------------------------------

UNPICKLABLE_ARGUMENT = {
    "process": (
        r"Cannot send task run {run} to a worker process: argument 'y' of task 'add' cannot "
        r"be pickled \(TypeError: cannot pickle '_thread.lock' object\)\. Arguments travel "
        r"to the 'process' runner's workers pickled \(with cloudpickle\): pass something "
        r"picklable instead \(a path rather than an open file, settings rather than a "
        r"client, lock or connection\), create the object inside the task, or run this task "
        r"on the 'thread' runner\."
    ),
    "dask": (
        r"Cannot send task run {run} to the Dask cluster: argument 'y' of task 'add' cannot "
        r"be pickled \(TypeError: cannot pickle '_thread.lock' object\)\. Arguments travel "
        r"to Dask workers pickled \(with cloudpickle\): pass something picklable instead "
        r"\(a path rather than an open file, settings rather than a client, lock or "
        r"connection\), or create the object inside the task\."
    ),
    "ray": (
        r"Cannot send task run {run} to Ray: argument 'y' of task 'add' cannot be pickled "
        r"\(TypeError: cannot pickle '_thread.lock' object\)\. Arguments travel to Ray "
        r"workers pickled: pass something picklable instead \(a path rather than an open "
        r"file, settings rather than a client, lock or connection\), or create the object "
        r"inside the task\."
    ),
}


@pytest.mark.parametrize(
    "runner_name", runners("process", "dask", "ray"), indirect=True, scope="module"
)
def test_an_unpicklable_argument_is_refused_naming_the_task_and_parameter(
    runner: TaskRunner, runner_name: str
) -> None:
    @flow(task_runner=runner)
    def sends_a_lock() -> tuple[BaseException | None, BaseException | None]:
        at_submit: BaseException | None
        try:
            first = add.submit(1, threading.Lock())
        except Exception as exc:
            at_submit = exc
        else:
            # A runner that sends runs in batches refuses it then: the run fails.
            first.wait()
            assert first.state.is_failed(), first.state
            at_submit = first.state.error
        # With an upstream run to wait for, the argument is pickled later: the run fails.
        later = add.submit(inc.submit(1), threading.Lock())
        later.wait()
        return at_submit, later.state.error

    at_submit, later = sends_a_lock()
    for error in (at_submit, later):
        assert isinstance(error, pickle.PicklingError), repr(error)
        text = str(error)
        expected = UNPICKLABLE_ARGUMENT[runner_name]
        assert re.fullmatch(expected.format(run=RUN_NAME), text), text


@pytest.mark.parametrize(
    "runner_name", runners("process", "dask", "ray"), indirect=True, scope="module"
)
def test_an_unpicklable_exception_still_fails_the_run_with_its_type_and_message(
    runner: TaskRunner,
) -> None:
    @flow(task_runner=runner)
    def raises_it() -> tuple[str | None, BaseException | None, str]:
        future = raise_unpicklable.submit("cannot travel")
        future.wait()
        state = future.state
        assert state.is_failed(), state
        with pytest.raises(Exception) as info:
            future.result()
        return state.message, state.error, str(info.value)

    message, error, raised = raises_it()
    assert message == "UnpicklableError: cannot travel"
    assert not isinstance(error, UnpicklableError)  # it could not travel; its text did
    assert "UnpicklableError" in f"{error!r}" and "cannot travel" in raised


# -- waiting -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "runner_name", runners("thread", "process", "dask", "ray"), indirect=True, scope="module"
)
def test_timeouts_of_result_and_wait_expire_and_the_run_carries_on(
    runner: TaskRunner, tmp_path: Path
) -> None:
    rv = Rendezvous(tmp_path)

    @flow(task_runner=runner)
    def impatient() -> tuple[str, Any, str, str]:
        future = stoppable.submit(rv, "slow", "done")
        rv.wait("started-slow")
        with pytest.raises(TimeoutError) as by_result:
            future.result(timeout=0.2)
        done, not_done = wait([future], timeout=0.2)
        with pytest.raises(TimeoutError) as by_as_completed:
            list(as_completed([future], timeout=0.2))
        waited = future.wait(0.1)
        rv.signal("release-slow")
        value = future.result(timeout=60)
        return (
            str(by_result.value),
            (done, not_done, waited, value),
            str(by_as_completed.value),
            future.name,
        )

    by_result, (done, not_done, waited, value), by_as_completed, name = impatient()
    assert re.fullmatch(
        rf"Task run '{name}' did not finish within 0\.2 s; it is still (RUNNING|PENDING)\.",
        by_result,
    ), by_result
    assert done == set() and len(not_done) == 1 and waited is False
    assert by_as_completed == "1 of 1 futures still unfinished after the timeout."
    assert value == "done"


# -- futures and runners after the fact ---------------------------------------------------


@pytest.mark.parametrize("runner_name", runners(), indirect=True, scope="module")
def test_a_future_of_a_flow_that_ended_stays_final_and_usable(runner: TaskRunner) -> None:
    kept: list[Future[int]] = []

    # The flow owns its copy of the runner: that runner is shut down when the flow ends.
    @flow(task_runner=runner.duplicate())
    def first() -> None:
        kept.extend([inc.submit(41), add.submit(1, "x")])
        kept[1].wait()

    first()
    ok, failed = kept
    assert ok.done() and ok.state.is_completed() and ok.result() == 42
    assert failed.state.is_failed()
    with pytest.raises(TypeError, match="unsupported operand"):
        failed.result()
    assert ok.cancel() is False  # a final run stays as it ended

    @flow(task_runner=runner)
    def second() -> tuple[int, str | None]:
        later = add.submit(ok, 1)
        blocked = inc.submit(failed)
        blocked.wait()
        return later.result(), blocked.state.name

    assert second() == (43, "UpstreamFailed")


@pytest.mark.parametrize("runner_name", runners(), indirect=True, scope="module")
def test_submitting_to_a_runner_that_was_shut_down(runner: TaskRunner) -> None:
    own = runner.duplicate().start()
    name = runner.name

    @flow(name="closing", task_runner=own)
    def closes_its_runner() -> str:
        assert inc.submit(1).result() == 2
        own.shutdown()
        with pytest.raises(RunnerClosedError) as info:
            inc.submit(2)
        return str(info.value)

    message = closes_its_runner()
    assert re.fullmatch(
        rf"Cannot submit task run {RUN_NAME}: task runner '{name}' of flow run '[a-z-]+' has "
        r"been shut down\. Submit from inside a running flow, or start a new runner\.",
        message,
    ), message
    with pytest.raises(RunnerClosedError) as info:
        own.start()
    assert str(info.value) == (
        f"Task runner '{name}' has been shut down and cannot start again; create a new one."
    )
