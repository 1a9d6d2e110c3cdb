"""Fuzz: task options, valid and invalid, and task bodies of every shape, on every runner.

Each example is either refused when the task is defined, with an error that names the
wrong option, or run once in a flow; then the run ends, within its timeout and its
retries' delays plus a margin, in the state a small oracle computes from the example:
COMPLETED or FAILED (TimedOut when the body overran its timeout), after
``1 + min(retries, failures)`` attempts; CRASHED only when the body itself raised a
BaseException that is not an Exception (and then it is not retried; a KeyboardInterrupt
raised in the main thread, on the `sync` runner, may be Ctrl-C and interrupts the flow).
Hooks and done callbacks that raise, whatever they raise, change nothing.

CI draws the same examples every time (``derandomize`` when ``CI`` is set); elsewhere each
run draws new ones.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tempfile
from typing import Any, Final

import pytest
from baton import (
    Future,
    InvalidOptionsError,
    RemoteTaskError,
    State,
    StateType,
    Task,
    TaskRunner,
    TaskTimeoutError,
    exponential_backoff,
    flow,
    task,
)
from baton.testing._rendezvous import Rendezvous
from baton.testing._suite_runner import _runner_threads_may_use_random
from fuzz_tasks import (
    ALWAYS,
    FAIL_KINDS,
    OK_KINDS,
    RAISES,
    SLEEP_SECONDS,
    VALUE,
    Condition,
    Delays,
    DoneCallback,
    Hook,
    async_body,
    body,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reliability_support import runners

EXAMPLES: Final = {"thread": 150, "sync": 150, "process": 80, "dask": 30, "ray": 30}
MARGIN_SECONDS: Final = {"thread": 15.0, "sync": 15.0, "process": 30.0, "dask": 60.0, "ray": 60.0}
"""Beyond the timeouts and delays of an example, how long its run may take to end: a
bound that only a hang exceeds (a worker process killed on a timeout is replaced)."""
REMOTE: Final = frozenset({"process", "dask", "ray"})
MAX_DELAY: Final = 0.02
"""The longest retry delay a valid example draws."""

VALID, INVALID, EITHER = "valid", "invalid", "either"
"""How an option's value must be taken: accepted, refused, or either (a value pydantic
coerces, such as ``retries=True`` or ``timeout_seconds="0.5"``)."""


@dataclasses.dataclass(frozen=True)
class Opt:
    """A drawn option value, what the decorator must make of it, and what it means."""

    value: Any
    verdict: str = VALID
    meaning: Any = None

    def __repr__(self) -> str:
        return repr(self.value)


def _valid(value: Any, meaning: Any = None) -> Opt:
    return Opt(value, VALID, value if meaning is None else meaning)


def _invalid(value: Any) -> Opt:
    return Opt(value, INVALID)


NAN, INF = float("nan"), float("inf")

# Per option: values the decorator must (or may) accept, and values it must refuse.
small_delays = st.floats(0, MAX_DELAY)
OPTIONS: Final[dict[str, tuple[st.SearchStrategy[Opt], st.SearchStrategy[Opt]]]] = {
    "retries": (
        st.one_of(
            st.integers(0, 3).map(_valid),
            st.integers(4, 10**20).map(_valid),
            st.sampled_from(
                [
                    Opt(True, EITHER, 1),
                    Opt(False, EITHER, 0),
                    Opt(2.0, EITHER, 2),
                    Opt("2", EITHER, 2),
                ]
            ),
        ),
        st.one_of(
            st.integers(max_value=-1).map(_invalid),
            st.sampled_from([1.5, NAN, INF, None, "two"]).map(_invalid),
        ),
    ),
    "retry_delay_seconds": (
        st.one_of(
            st.just(_valid(0)),
            small_delays.map(_valid),
            st.lists(small_delays, max_size=3).map(_valid),
            st.sampled_from(
                [
                    Opt(exponential_backoff(0.001), VALID, "backoff"),
                    Opt(Delays("small"), VALID, "callable"),
                    Opt(Delays("small_list"), VALID, "callable"),
                ]
            ),
        ),
        st.sampled_from(
            [
                exponential_backoff,  # not called
                Delays("string"),
                Delays("negative"),
                Delays("nan"),
                Delays("function"),
                Delays("raise"),
                lambda: 0.0,
                lambda retries, attempt: 0.0,
                -1,
                -0.5,
                INF,
                NAN,
                "soon",
                True,
                [0.01, -1],
                [NAN],
                ["0.01"],
            ]
        ).map(_invalid),
    ),
    "retry_jitter_factor": (
        st.one_of(
            st.floats(0, 2).map(_valid),
            st.sampled_from(
                [_valid(None), _valid(0), Opt("0.5", EITHER, 0.5), Opt(True, EITHER, 1.0)]
            ),
        ),
        st.sampled_from([-1, NAN, "lots", []]).map(_invalid),
    ),
    "timeout_seconds": (
        st.one_of(
            st.floats(0.2, 1.0).map(_valid),
            st.sampled_from(
                [
                    Opt(None, VALID, None),
                    Opt(INF, VALID, None),
                    _valid(1e10),
                    Opt("0.5", EITHER, 0.5),
                    Opt(True, EITHER, 1.0),
                ]
            ),
        ),
        st.sampled_from([0, -1, -INF, NAN, "soon"]).map(_invalid),
    ),
    "retry_condition_fn": (
        st.sampled_from(
            [
                _valid(None, "none"),
                _valid(Condition("true"), "true"),
                _valid(Condition("false"), "false"),
                _valid(Condition("raise"), "raise"),
            ]
        ),
        st.sampled_from(["yes", 1]).map(_invalid),
    ),
}


@dataclasses.dataclass(frozen=True)
class Example:
    """One task and one run of it."""

    options: dict[str, Opt]
    is_async: bool
    failures: int
    fail_kind: str
    ok_kind: str
    on_completion: tuple[str, ...] | str | None
    on_failure: tuple[str, ...] | str | None
    done_callback: str

    def meaning(self, option: str, default: Any) -> Any:
        opt = self.options.get(option)
        return default if opt is None or opt.verdict == INVALID else opt.meaning

    @property
    def retries(self) -> int:
        retries: int = self.meaning("retries", 0)
        return retries

    @property
    def timeout(self) -> float | None:
        timeout: float | None = self.meaning("timeout_seconds", None)
        return timeout

    @property
    def retried_failures(self) -> int:
        """How many failed attempts are followed by another one, at most."""
        if self.meaning("retry_condition_fn", "none") in ("false", "raise"):
            return 0
        return self.retries


hook_lists = st.one_of(st.none(), st.lists(st.sampled_from(RAISES), max_size=2).map(tuple))
"""Hooks by what each raises (or no hooks); "not a hook" is the one refused value."""


@st.composite
def examples(draw: st.DrawFn) -> Example:
    # One example in four has mistakes (one or more options refused), the others run.
    mistaken = draw(st.integers(0, 3)) == 0
    options: dict[str, Opt] = {}
    for name, (accepted, refused) in OPTIONS.items():
        if draw(st.booleans()):
            options[name] = draw(st.one_of(accepted, refused) if mistaken else accepted)
    hooks_: list[tuple[str, ...] | str | None] = [draw(hook_lists), draw(hook_lists)]
    if mistaken and draw(st.integers(0, 3)) == 0:
        hooks_[draw(st.integers(0, 1))] = "not a hook"
    example = Example(
        options=options,
        is_async=draw(st.booleans()),
        # Failing runs first: what Hypothesis draws first, and shrinks to, is the first.
        failures=draw(st.sampled_from([1, ALWAYS, 2, 0])),
        fail_kind=draw(st.sampled_from(FAIL_KINDS)),
        ok_kind=draw(st.sampled_from(OK_KINDS)),
        on_completion=hooks_[0],
        on_failure=hooks_[1],
        done_callback=draw(st.sampled_from(RAISES)),
    )
    # Keep every run short: a body overruns only a short timeout, and one that always
    # fails does so only when its retries are few.
    changes: dict[str, Any] = {}
    timeout = example.timeout
    if timeout is not None and timeout <= 1.0 and draw(st.booleans()):
        changes["fail_kind"] = "sleep_past_timeout"  # as often as all other kinds
    if example.fail_kind == "sleep_past_timeout" and not (timeout is not None and timeout <= 1.0):
        changes["fail_kind"] = "raise"
    if example.failures == ALWAYS and example.retried_failures > 3:
        changes["failures"] = 2
    return dataclasses.replace(example, **changes) if changes else example


# -- the oracle ------------------------------------------------------------------------------


def refusal(example: Example) -> tuple[bool, set[str]]:
    """Whether the task must be refused when defined, and the options its error may name."""
    invalid = {name for name, opt in example.options.items() if opt.verdict == INVALID}
    either = {name for name, opt in example.options.items() if opt.verdict == EITHER}
    for name in ("on_completion", "on_failure"):
        if isinstance(getattr(example, name), str):
            invalid.add(name)
    delays = example.options.get("retry_delay_seconds")
    if delays is not None and delays.meaning == "backoff" and example.retries > 1000:
        # exponential_backoff's delays overflow a float past some 1,000 retries.
        either.add("retry_delay_seconds")
    return bool(invalid), invalid | either


@dataclasses.dataclass(frozen=True)
class Expected:
    type: StateType
    attempts: int
    error: str | None = None
    """The name of the error's type (FAILED, CRASHED)."""
    timed_out: bool = False
    interrupts_flow: bool = False


def fired_hooks(example: Example, kind: StateType) -> tuple[str, ...]:
    hooks_ = example.on_completion if kind is StateType.COMPLETED else example.on_failure
    return hooks_ if isinstance(hooks_, tuple) else ()


def hook_markers(example: Example, state: State, runner_name: str) -> list[str]:
    """The markers of the hooks that must have run for a run that ended in `state`."""
    kind = state.type
    if example.ok_kind == "unpicklable_value" and runner_name in REMOTE:
        if kind is StateType.FAILED and _error_name(state.error) == "PicklingError":
            # The run completed on its worker, where its hooks ran; only its value could
            # not travel back.
            kind = StateType.COMPLETED
    name = "on_completion" if kind is StateType.COMPLETED else "on_failure"
    return [f"{name}-{i}" for i in range(len(fired_hooks(example, kind)))]


def expected_outcome(example: Example, runner_name: str) -> Expected:
    in_main_thread = runner_name == "sync" and not example.is_async
    if example.failures == 0:
        outcome = _succeeded(example, runner_name, 1)
    elif example.fail_kind in ("system_exit", "keyboard_interrupt"):
        error = "SystemExit" if example.fail_kind == "system_exit" else "KeyboardInterrupt"
        outcome = Expected(
            StateType.CRASHED,
            1,
            error,
            interrupts_flow=in_main_thread and error == "KeyboardInterrupt",
        )
    elif example.failures <= example.retried_failures:
        outcome = _succeeded(example, runner_name, example.failures + 1)
    else:
        timed_out = example.fail_kind == "sleep_past_timeout"
        error = {
            "raise": "ValueError",
            "raise_unpicklable": "UnpicklableError",
            "raise_unprintable": "UnprintableError",
            "raise_two_args": "TwoArgError",
            "sleep_past_timeout": "TaskTimeoutError",
        }[example.fail_kind]
        outcome = Expected(StateType.FAILED, example.retried_failures + 1, error, timed_out)
    return outcome


def _succeeded(example: Example, runner_name: str, attempts: int) -> Expected:
    if example.ok_kind == "unpicklable_value" and runner_name in REMOTE:
        return Expected(StateType.FAILED, attempts, "PicklingError")
    return Expected(StateType.COMPLETED, attempts)


def bound_seconds(example: Example, runner_name: str) -> float:
    """How long the run may take, at most, to end: its attempts, its delays, a margin."""
    attempts = min(example.failures, example.retried_failures) + 1
    timeout = example.timeout
    per_attempt = (timeout if timeout is not None and timeout <= 1.0 else 0.0) + SLEEP_SECONDS
    return attempts * (per_attempt + MAX_DELAY) + MARGIN_SECONDS[runner_name]


# -- the test -----------------------------------------------------------------------------------


def _build(example: Example, rv: Rendezvous) -> Task[..., Any]:
    options: dict[str, Any] = {name: opt.value for name, opt in example.options.items()}
    for name in ("on_completion", "on_failure"):
        hooks_ = getattr(example, name)
        if isinstance(hooks_, tuple):
            options[name] = [Hook(rv, f"{name}-{i}", raises) for i, raises in enumerate(hooks_)]
        elif hooks_ is not None:
            options[name] = hooks_
    return task(**options)(async_body if example.is_async else body)


def _error_name(error: BaseException | None) -> str:
    if isinstance(error, RemoteTaskError):
        return error.type_name
    return type(error).__name__


def _named_options(message: str) -> set[str]:
    return set(re.findall(r"^  ([a-z_]+)(?:\.\d+)?:", message, flags=re.MULTILINE))


def check(example: Example, runner: TaskRunner, runner_name: str) -> None:
    must_refuse, may_name = refusal(example)
    with tempfile.TemporaryDirectory(prefix="baton-fuzz-") as directory:
        rv = Rendezvous(directory)
        refused: str | None = None
        try:
            fuzzed = _build(example, rv)
        except (InvalidOptionsError, TypeError) as error:
            refused = str(error)
        if refused is not None:
            named = _named_options(refused) or {n for n in example.options if n in refused}
            assert named, f"the error names no option: {refused}"
            assert named <= may_name, f"{refused} names {named}, expected some of {may_name}"
            return
        assert not must_refuse, f"options accepted, but {may_name} should have been refused"

        expected = expected_outcome(example, runner_name)
        bound = bound_seconds(example, runner_name)
        submitted: list[Future[Any]] = []

        @flow(task_runner=runner)
        def one_run() -> list[Any]:
            future = fuzzed.submit(
                rv, "attempt", example.failures, example.fail_kind, example.ok_kind
            )
            submitted.append(future)
            future.add_done_callback(DoneCallback(example.done_callback))
            if not future.wait(bound):
                pytest.fail(
                    f"the run did not end within {bound:g} s: it is {future.state!r}\n"
                    f"example: {example!r}"
                )
            return [future.state]

        interrupted = False
        try:
            [state] = one_run()
        except KeyboardInterrupt:
            interrupted = True
            # On `sync` the run ends inside `submit`, which the interruption leaves.
            state = submitted[0].state if submitted else State.crashed(KeyboardInterrupt())
        attempts = len(rv.records("attempt"))
        hooks_ran = [rv.is_set(marker) for marker in hook_markers(example, state, runner_name)]

    where = f"{state!r} after {attempts} attempt(s); expected {expected}"
    assert interrupted is expected.interrupts_flow, where
    if interrupted:
        # Ctrl-C, as far as the flow can tell: the run crashed, nothing more was tried.
        assert state.type is StateType.CRASHED, where
        assert attempts == expected.attempts, where
        return
    assert state.type in (StateType.COMPLETED, StateType.FAILED, StateType.CRASHED), where
    timeout = example.timeout
    if (
        state.name == "TimedOut"
        and not expected.timed_out
        and timeout is not None
        and timeout <= 1.0
    ):
        # A loaded machine can make a short timeout expire before a quick body ends.
        assert 1 <= attempts <= example.retried_failures + 1, where
        return
    assert state.type is expected.type, where
    assert attempts == expected.attempts, where
    if expected.type is StateType.COMPLETED:
        value = state.result()
        if example.ok_kind == "unpicklable_value":
            assert hasattr(value, "acquire"), where
        else:
            assert value == VALUE, where
    else:
        assert _error_name(state.error) == expected.error, where
        assert state.message, where
        if expected.timed_out:
            assert state.name == "TimedOut" and isinstance(state.error, TaskTimeoutError), where
        if expected.error == "PicklingError":
            assert "cannot be pickled" in str(state.message), where
    assert all(hooks_ran), f"{where}; hooks that ran: {hooks_ran}"


@pytest.mark.slow
@pytest.mark.parametrize("runner_name", runners(), indirect=True, scope="module")
def test_every_run_ends_in_the_expected_state_or_is_refused_naming_the_option(
    runner: TaskRunner, runner_name: str
) -> None:
    @_runner_threads_may_use_random
    @settings(
        max_examples=EXAMPLES[runner_name],
        deadline=None,
        derandomize=bool(os.environ.get("CI")),
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        print_blob=True,
    )
    @given(example=examples())
    def fuzz(example: Example) -> None:
        check(example, runner, runner_name)

    fuzz()


def test_the_oracle_on_examples_worked_by_hand() -> None:
    plain = Example({}, False, 0, "raise", "value", None, None, "nothing")
    assert expected_outcome(plain, "thread") == Expected(StateType.COMPLETED, 1)
    flaky = dataclasses.replace(plain, options={"retries": _valid(3)}, failures=2)
    assert expected_outcome(flaky, "process") == Expected(StateType.COMPLETED, 3)
    hopeless = dataclasses.replace(flaky, failures=ALWAYS)
    assert expected_outcome(hopeless, "thread") == Expected(StateType.FAILED, 4, "ValueError")
    vetoed = dataclasses.replace(
        hopeless, options={"retries": _valid(3), "retry_condition_fn": _valid(None, "false")}
    )
    assert expected_outcome(vetoed, "thread").attempts == 1
    exits = dataclasses.replace(hopeless, fail_kind="system_exit")
    assert expected_outcome(exits, "sync") == Expected(StateType.CRASHED, 1, "SystemExit")
    lock = dataclasses.replace(plain, ok_kind="unpicklable_value")
    assert expected_outcome(lock, "sync").type is StateType.COMPLETED
    assert expected_outcome(lock, "ray") == Expected(StateType.FAILED, 1, "PicklingError")
    interrupting = dataclasses.replace(hopeless, fail_kind="keyboard_interrupt")
    assert expected_outcome(interrupting, "sync").interrupts_flow
    assert not expected_outcome(interrupting, "thread").interrupts_flow
    assert not expected_outcome(
        dataclasses.replace(interrupting, is_async=True), "sync"
    ).interrupts_flow
    hooked = dataclasses.replace(plain, on_completion=("nothing", "KeyboardInterrupt"))
    assert expected_outcome(hooked, "sync") == Expected(StateType.COMPLETED, 1)
    assert refusal(dataclasses.replace(plain, options={"retries": _invalid(-1)})) == (
        True,
        {"retries"},
    )
    assert math.isfinite(bound_seconds(hopeless, "thread"))
