"""`@task` and its options: decoration, validation, `with_options`, and task run names."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from baton import (
    InvalidOptionsError,
    State,
    Task,
    current_task_run,
    exponential_backoff,
    flow,
    task,
)

RUNNERS = ["thread", "sync"]
OPTION_NAMES = [
    "batch_size",
    "description",
    "name",
    "on_completion",
    "on_failure",
    "priority",
    "resources",
    "retries",
    "retry_condition_fn",
    "retry_delay_seconds",
    "retry_jitter_factor",
    "tags",
    "task_run_name",
    "timeout_seconds",
]
DEFAULT_RUN_NAME = re.compile(r"^(?P<task>.+)-[0-9a-f]{3}$")


def run_in_flow(runner: str, body: Callable[[], Any]) -> Any:
    return flow(task_runner=runner)(body)()


# -- decoration -----------------------------------------------------------------------


def test_bare_decorator_keeps_the_function_and_its_metadata() -> None:
    def add(x: int, y: int = 2) -> int:
        """Add two numbers."""
        return x + y

    wrapped = task(add)
    assert isinstance(wrapped, Task)
    assert wrapped.fn is add
    assert wrapped.name == "add"
    assert wrapped.__name__ == "add"
    assert wrapped.__doc__ == "Add two numbers."
    assert wrapped.__wrapped__ is add  # type: ignore[attr-defined]
    assert wrapped(1) == 3
    assert wrapped.options.retries == 0
    assert wrapped.options.timeout_seconds is None
    assert wrapped.options.tags == frozenset()
    assert wrapped.options.on_completion == ()
    assert not wrapped.is_async


def test_decorator_with_every_option() -> None:
    def done_hook(task: Any, task_run: Any, state: State) -> None: ...

    def failed_hook(task: Any, task_run: Any, state: State) -> None: ...

    def condition(task: Any, task_run: Any, state: State) -> bool:
        return True

    backoff = exponential_backoff(0.5)

    @task(
        name="load-rows",
        task_run_name="load {table}",
        description="Load rows into a table.",
        retries=3,
        retry_delay_seconds=backoff,
        retry_jitter_factor=0.2,
        retry_condition_fn=condition,
        timeout_seconds=30,
        tags=["etl", "db", "etl"],
        on_completion=[done_hook],
        on_failure=failed_hook,
    )
    def load(table: str) -> str:
        return f"loaded {table}"

    options = load.options
    assert load.name == "load-rows"
    assert options.name == "load-rows"
    assert options.task_run_name == "load {table}"
    assert options.description == "Load rows into a table."
    assert options.retries == 3
    assert options.retry_delay_seconds is backoff
    assert options.retry_jitter_factor == 0.2
    assert options.retry_condition_fn is condition
    assert options.timeout_seconds == 30.0
    assert options.tags == frozenset({"etl", "db"})
    assert options.on_completion == (done_hook,)
    assert options.on_failure == (failed_hook,)
    assert repr(load) == "<Task 'load-rows'>"
    state = load("users", return_state=True)
    assert state.result() == "loaded users"


def test_task_with_a_positional_function_and_options_is_refused() -> None:
    def f() -> None: ...

    with pytest.raises(TypeError, match=r"@task or @task\(option=...\)"):
        task(f, retries=1)  # type: ignore[call-overload]


def test_task_needs_a_callable() -> None:
    with pytest.raises(TypeError, match="needs a function"):
        task(retries=1)(42)  # type: ignore[arg-type]


# -- validation at decoration time ----------------------------------------------------


@pytest.mark.parametrize(
    ("options", "field", "detail"),
    [
        ({"retries": -1}, "retries", "greater than or equal to 0"),
        ({"retries": "many"}, "retries", "'many'"),
        ({"timeout_seconds": 0}, "timeout_seconds", "> 0"),
        ({"timeout_seconds": -5}, "timeout_seconds", "> 0"),
        ({"retry_delay_seconds": -1}, "retry_delay_seconds", ">= 0"),
        ({"retry_delay_seconds": [1, -2]}, "retry_delay_seconds", "-2"),
        ({"retry_jitter_factor": -0.1}, "retry_jitter_factor", "greater than or equal to 0"),
        ({"tags": "etl"}, "tags", "single string"),
        ({"name": ""}, "name", "at least 1 character"),
    ],
)
def test_bad_option_fails_when_the_decorator_is_written(
    options: dict[str, Any], field: str, detail: str
) -> None:
    # No function is given: the error comes from `@task(...)` itself.
    with pytest.raises(InvalidOptionsError) as caught:
        task(**options)
    message = str(caught.value)
    assert re.search(rf"^\s+{field}: ", message, re.MULTILINE), message
    assert detail in message
    assert isinstance(caught.value, ValueError)


def test_every_bad_option_is_reported_at_once() -> None:
    with pytest.raises(InvalidOptionsError) as caught:
        task(retries=-1, timeout_seconds=0)
    message = str(caught.value)
    assert "retries:" in message
    assert "timeout_seconds:" in message


def test_unknown_option_lists_the_known_ones() -> None:
    with pytest.raises(InvalidOptionsError) as caught:
        task(retry=3)
    message = str(caught.value)
    assert "retry: not an option" in message
    known = re.search(r"options are: ([^)]*)\)", message)
    assert known is not None
    assert known.group(1).split(", ") == OPTION_NAMES


def test_named_task_is_named_in_the_error() -> None:
    with pytest.raises(InvalidOptionsError, match="task 'fetch'"):
        task(name="fetch", retries=-1)


def test_task_run_name_with_a_field_that_is_not_a_parameter() -> None:
    decorate = task(task_run_name="train on {datset}")
    with pytest.raises(InvalidOptionsError) as caught:

        @decorate
        def train(dataset: str, epochs: int = 1) -> None: ...

    message = str(caught.value)
    assert "task 'train'" in message
    assert "task_run_name" in message
    assert "{datset} is not a parameter of train()" in message
    assert "parameters: dataset, epochs" in message


def test_task_run_name_with_a_positional_field_asks_for_parameter_names() -> None:
    with pytest.raises(InvalidOptionsError, match=r"use parameter names in braces, such as \{x\}"):

        @task(task_run_name="run {0}")
        def f(x: int) -> None: ...


def test_task_run_name_that_is_not_a_valid_template() -> None:
    with pytest.raises(InvalidOptionsError, match=r"task_run_name: .*'run \{x'"):

        @task(task_run_name="run {x")
        def f(x: int) -> None: ...


def test_task_run_name_may_use_any_field_when_the_task_takes_kwargs() -> None:
    @task(task_run_name="run {anything}")
    def f(**kwargs: Any) -> int:
        return len(kwargs)

    future = f.submit(anything="goes")
    assert future.result() == 1
    assert future.name == "run goes"


# -- with_options ---------------------------------------------------------------------


def test_with_options_returns_a_new_task_with_merged_options() -> None:
    @task(retries=1, tags=["a"], name="fetch")
    def fetch(url: str) -> str:
        return url

    changed = fetch.with_options(timeout_seconds=5, tags={"b"})
    assert changed is not fetch
    assert isinstance(changed, Task)
    assert changed.fn is fetch.fn
    assert changed.options.retries == 1  # kept from the original
    assert changed.name == "fetch"
    assert changed.options.timeout_seconds == 5.0
    assert changed.options.tags == frozenset({"b"})
    # the original is untouched
    assert fetch.options.timeout_seconds is None
    assert fetch.options.tags == frozenset({"a"})
    assert changed("u") == "u"


def test_with_options_changes_behaviour_of_the_copy_only() -> None:
    attempts: list[int] = []

    @task
    def flaky() -> str:
        attempts.append(1)
        if len(attempts) % 2 == 1:
            raise ValueError("first try fails")
        return "ok"

    patient = flaky.with_options(retries=1)
    assert patient() == "ok"
    assert len(attempts) == 2
    with pytest.raises(ValueError, match="first try fails"):
        flaky()
    assert len(attempts) == 3


def test_with_options_renames() -> None:
    @task
    def fetch() -> int:
        return 1

    renamed = fetch.with_options(name="fetch-fast")
    assert renamed.name == "fetch-fast"
    assert fetch.name == "fetch"
    assert DEFAULT_RUN_NAME.match(renamed.submit().name).group("task") == "fetch-fast"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"retries": -1}, "retries"),
        ({"timeout_seconds": 0}, "timeout_seconds"),
        ({"tags": "etl"}, "tags"),
        ({"retry_delay_seconds": [1, -2]}, "retry_delay_seconds"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_with_options_validates(changes: dict[str, Any], field: str) -> None:
    @task(retries=2)
    def fetch() -> None: ...

    with pytest.raises(InvalidOptionsError, match=rf"task 'fetch':\n\s+{field}: "):
        fetch.with_options(**changes)
    assert fetch.options.retries == 2


def test_with_options_checks_the_run_name_template() -> None:
    @task
    def fetch(url: str) -> None: ...

    with pytest.raises(InvalidOptionsError, match=r"\{uri\} is not a parameter of fetch\(\)"):
        fetch.with_options(task_run_name="get {uri}")


# -- task run names -------------------------------------------------------------------


@dataclass
class Dataset:
    name: str
    rows: int


@dataclass
class ModelConfig:
    name: str
    layers: int


@pytest.mark.parametrize("runner", RUNNERS)
def test_task_run_name_template_with_attribute_access(runner: str) -> None:
    seen_inside: list[str] = []

    @task(task_run_name="train on {dataset.name} with {model_config.name}")
    def train(dataset: Dataset, model_config: ModelConfig) -> int:
        run = current_task_run()
        assert run is not None
        seen_inside.append(run.name)
        return dataset.rows * model_config.layers

    def body() -> tuple[str, str, int]:
        future = train.submit(Dataset("mnist", 10), ModelConfig("resnet", 3))
        return future.task_run.name, future.name, future.result()

    run_name, future_name, value = run_in_flow(runner, body)
    assert run_name == future_name == "train on mnist with resnet"
    assert seen_inside == ["train on mnist with resnet"]
    assert value == 30


def test_task_run_name_template_includes_defaults_and_keyword_arguments() -> None:
    @task(task_run_name="{source}->{target} ({mode}, {items[1]})")
    def copy(source: str, target: str, items: list[int], mode: str = "fast") -> None: ...

    assert copy.submit("a", target="b", items=[7, 8]).name == "a->b (fast, 8)"
    assert copy.submit("a", "b", [1, 2], mode="slow").name == "a->b (slow, 2)"


def test_task_run_name_callable_without_arguments() -> None:
    calls: list[int] = []

    def name() -> str:
        calls.append(1)
        return "fixed-name"

    @task(task_run_name=name)
    def f(x: int) -> int:
        run = current_task_run()
        assert run is not None
        return run.name  # type: ignore[return-value]

    future = f.submit(1)
    assert future.result() == "fixed-name"
    assert future.name == "fixed-name"
    assert calls == [1]  # computed once per run


def test_task_run_name_callable_with_the_parameters() -> None:
    received: list[dict[str, Any]] = []

    def name(parameters: dict[str, Any]) -> str:
        received.append(dict(parameters))
        return f"fetch page {parameters['page']} of {parameters['site']}"

    @task(task_run_name=name)
    def fetch(site: str, page: int = 1) -> None: ...

    assert fetch.submit("example.org").name == "fetch page 1 of example.org"
    assert received == [{"site": "example.org", "page": 1}]


def test_default_task_run_name_is_the_task_name_and_three_hex_digits() -> None:
    @task
    def extract() -> None: ...

    names = [extract.submit().name for _ in range(20)]
    for name in names:
        match = DEFAULT_RUN_NAME.match(name)
        assert match is not None, name
        assert match.group("task") == "extract"
    assert len(set(names)) > 1  # distinct runs get distinct suffixes


def test_failing_name_callable_falls_back_to_the_default_name(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(parameters: dict[str, Any]) -> str:
        raise KeyError("nope")

    @task(task_run_name=broken)
    def f(x: int) -> int:
        return x

    with caplog.at_level(logging.WARNING, logger="baton"):
        future = f.submit(1)
        name = future.name
    assert future.result() == 1
    assert DEFAULT_RUN_NAME.match(name) is not None
    assert any("task_run_name of task 'f' failed" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("runner", RUNNERS)
def test_current_task_run_inside_a_task(runner: str) -> None:
    @task(task_run_name="double {x}")
    def double(x: int) -> tuple[str, int, dict[str, Any]]:
        run = current_task_run()
        assert run is not None
        assert run.task is double
        return run.name, run.id, run.parameters

    def body() -> list[Any]:
        futures = double.map([1, 2])
        return [(f.name, f.task_run_id, f.result()) for f in futures]

    for (name, run_id, (inside_name, inside_id, params)), x in zip(
        run_in_flow(runner, body), [1, 2], strict=True
    ):
        assert name == inside_name == f"double {x}"
        assert run_id == inside_id
        assert params == {"x": x}
    assert current_task_run() is None


def test_current_task_run_in_a_direct_call() -> None:
    @task(task_run_name="direct {x}")
    def f(x: int) -> str | None:
        run = current_task_run()
        return None if run is None else run.name

    assert f(3) == "direct 3"
    assert current_task_run() is None
