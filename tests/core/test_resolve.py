"""Futures among task arguments: resolved before the run, `quote`, `allow_failure`,
upstream failures and `wait_for`."""

from __future__ import annotations

import dataclasses
import re
import threading
import typing
from collections import namedtuple
from typing import Any

import pytest
from baton import (
    Future,
    StateType,
    UpstreamTaskError,
    allow_failure,
    flow,
    quote,
    task,
    wait,
)
from pydantic import BaseModel, ConfigDict

GATE_SECONDS = 10

Point = namedtuple("Point", ["x", "y"])


@dataclasses.dataclass
class Box:
    content: Any
    label: str = "box"


@dataclasses.dataclass(frozen=True)
class FrozenBox:
    content: Any
    label: str = "frozen"


class Model(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    content: Any
    label: str = "model"


def contains_future(obj: Any, depth: int = 0) -> bool:
    """Whether a future is reachable anywhere in `obj`."""
    if isinstance(obj, Future):
        return True
    if depth > 20:
        return False
    if isinstance(obj, dict):
        return any(
            contains_future(k, depth + 1) or contains_future(v, depth + 1) for k, v in obj.items()
        )
    if isinstance(obj, (list, tuple, set, frozenset)):
        return any(contains_future(item, depth + 1) for item in obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return any(
            contains_future(getattr(obj, f.name), depth + 1) for f in dataclasses.fields(obj)
        )
    if isinstance(obj, BaseModel):
        return any(contains_future(getattr(obj, n), depth + 1) for n in type(obj).model_fields)
    return False


@task
def echo(value: Any) -> Any:
    """Return the argument as the task received it (same process: same object)."""
    if contains_future(value):
        raise AssertionError(f"the task received a future: {value!r}")
    return value


@task
def inc(x: int) -> int:
    return x + 1


@task
def word(text: str) -> str:
    return text


@task
def fail(message: str) -> None:
    raise ValueError(message)


@task
def hold(started: threading.Event, release: threading.Event, value: object = None) -> object:
    """Signal that the run started, then stay RUNNING until the test releases it."""
    started.set()
    if not release.wait(GATE_SECONDS):
        raise TimeoutError("the test never released this run")
    return value


# -- resolution in containers --------------------------------------------------------


def test_future_argument_is_replaced_by_its_result() -> None:
    assert echo.submit(inc.submit(1)).result() == 2
    assert echo.submit(value=inc.submit(2)).result() == 3


def test_futures_in_list_and_tuple() -> None:
    a, b = inc.submit(1), inc.submit(10)
    assert echo.submit([a, "x", b]).result() == [2, "x", 11]
    result = echo.submit((a, (b, 0))).result()
    assert type(result) is tuple
    assert result == (2, (11, 0))


def test_futures_in_namedtuple_keep_the_type() -> None:
    result = echo.submit(Point(inc.submit(1), y=inc.submit(2))).result()
    assert type(result) is Point
    assert result == Point(2, 3)
    assert result.x == 2


def test_futures_in_dict_keys_and_values() -> None:
    key, value = word.submit("key"), inc.submit(41)
    result = echo.submit({key: value, "plain": [value]}).result()
    assert result == {"key": 42, "plain": [42]}


def test_futures_in_set_and_frozenset() -> None:
    a, b = inc.submit(1), inc.submit(2)
    result = echo.submit({a, b, 7}).result()
    assert type(result) is set
    assert result == {2, 3, 7}
    frozen = echo.submit(frozenset({a, b})).result()
    assert type(frozen) is frozenset
    assert frozen == frozenset({2, 3})


@pytest.mark.parametrize("cls", [Box, FrozenBox])
def test_futures_in_dataclasses(cls: type[Box] | type[FrozenBox]) -> None:
    upstream = inc.submit(1)
    original = cls([upstream, {"k": upstream}])
    result = echo.submit(original).result()
    assert type(result) is cls
    assert result.content == [2, {"k": 2}]
    assert result.label == original.label
    # The caller's object is left as it was.
    assert original.content[0] is upstream


def test_futures_in_a_pydantic_model() -> None:
    upstream = inc.submit(1)
    original = Model(content={"n": upstream}, label="m")
    result = echo.submit(original).result()
    assert type(result) is Model
    assert result.content == {"n": 2}
    assert result.label == "m"
    assert original.content["n"] is upstream


def test_deeply_mixed_nesting() -> None:
    upstream = inc.submit(1)
    value = {"a": [Box((upstream, {upstream}))], "b": Model(content=Point(upstream, 0))}
    result = echo.submit(value).result()
    assert result["a"][0].content == (2, {2})
    assert result["b"].content == Point(2, 0)


def test_direct_call_resolves_futures_too() -> None:
    upstream = inc.submit(1)
    assert echo([upstream, {"k": upstream}]) == [2, {"k": 2}]


def test_unchanged_containers_are_passed_as_the_same_object() -> None:
    plain_list = [1, [2, 3], {"k": "v"}]
    plain_dict = {"a": [1], "b": (2,)}
    box = Box([1, 2])
    frozen = FrozenBox(("x",))
    model = Model(content=[1])
    for value in (plain_list, plain_dict, box, frozen, model):
        assert echo.submit(value).result() is value
    # Only the parts that held a future are rebuilt; their siblings stay themselves.
    inner = {"untouched": [1, 2]}
    result = echo.submit({"with": [inc.submit(0)], "without": inner}).result()
    assert result["with"] == [1]
    assert result["without"] is inner


def test_resolution_waits_for_the_upstream_before_the_run_starts() -> None:
    started, release = threading.Event(), threading.Event()
    upstream = hold.submit(started, release, "up")
    downstream = echo.submit({"up": upstream})
    try:
        assert started.wait(GATE_SECONDS)
        assert downstream.state.type is StateType.PENDING
        assert downstream.wait(0.02) is False
    finally:
        release.set()
    assert downstream.result(timeout=GATE_SECONDS) == {"up": "up"}


# -- quote ---------------------------------------------------------------------------


def test_quote_passes_a_future_untouched_and_does_not_wait_for_it() -> None:
    started, release = threading.Event(), threading.Event()

    @task
    def receive(value: Any) -> Any:
        # A returned future would be waited for: quote it to hand it back as it is.
        return quote(value)

    upstream = hold.submit(started, release, "held")
    try:
        received = receive.submit(quote(upstream)).result(timeout=GATE_SECONDS).unquote()
        assert received is upstream
        assert not upstream.done()
    finally:
        release.set()
    assert upstream.result(timeout=GATE_SECONDS) == "held"


def test_quote_passes_a_collection_as_the_same_object() -> None:
    @task
    def receive(value: Any) -> Any:
        return value

    upstream = inc.submit(1)
    collection = [upstream, {"k": upstream}]
    received = receive.submit(quote(collection)).result()
    assert received is collection
    assert received[0] is upstream


# -- allow_failure -------------------------------------------------------------------


def test_allow_failure_passes_the_upstream_exception_in() -> None:
    upstream = fail.submit("upstream broke")

    @task
    def inspect_error(value: Any) -> str:
        assert isinstance(value, ValueError)
        return f"got {value}"

    downstream = inspect_error.submit(allow_failure(upstream))
    assert downstream.result() == "got upstream broke"
    assert downstream.state.is_completed()


def test_allow_failure_passes_a_result_when_the_upstream_completed() -> None:
    assert echo.submit(allow_failure(inc.submit(1))).result() == 2


def test_allow_failure_around_a_collection() -> None:
    bad, good = fail.submit("one bad"), inc.submit(1)

    @task
    def receive(values: list[Any]) -> list[str]:
        return [type(v).__name__ for v in values]

    assert receive.submit(allow_failure([bad, good])).result() == ["ValueError", "int"]


def test_allow_failure_counts_as_handling_in_a_flow() -> None:
    @flow
    def tolerant() -> str:
        return echo.submit(allow_failure(fail.submit("tolerated"))).result().args[0]

    assert tolerant() == "tolerated"


# -- upstream failures ---------------------------------------------------------------


def test_upstream_failure_fails_the_downstream_without_running_it() -> None:
    ran: list[Any] = []

    @task
    def record(value: Any) -> Any:
        ran.append(value)
        return value

    upstream = fail.submit("root cause")
    downstream = record.submit([upstream])
    assert downstream.wait(GATE_SECONDS)
    state = downstream.state
    assert state.type is StateType.FAILED
    assert state.name == "UpstreamFailed"
    assert state.is_final()
    with pytest.raises(UpstreamTaskError) as info:
        downstream.result()
    message = str(info.value)
    assert repr(upstream.name) in message
    assert repr(downstream.name) in message
    assert isinstance(info.value.__cause__, ValueError)
    assert str(info.value.__cause__) == "root cause"
    assert ran == []
    upstream.result(raise_on_failure=False)


def test_a_chain_of_upstream_failures_ends_without_hanging() -> None:
    ran: list[str] = []

    @task
    def step(value: Any, label: str) -> str:
        ran.append(label)
        return label

    a = fail.submit("a broke")
    b = step.submit(a, "b")
    c = step.submit(b, "c")
    _, not_done = wait([a, b, c], timeout=GATE_SECONDS)
    assert not_done == set()
    assert a.state.name == "Failed"
    assert b.state.name == "UpstreamFailed"
    assert c.state.name == "UpstreamFailed"
    assert repr(a.name) in (b.state.message or "")
    assert repr(b.name) in (c.state.message or "")
    # Every link's error points at the root cause, and its message stays short.
    error = c.result(raise_on_failure=False)
    assert isinstance(error, UpstreamTaskError)
    assert isinstance(error.__cause__, ValueError)
    assert str(error.__cause__) == "a broke"
    assert len(str(error)) < 300
    assert ran == []


def test_a_chain_of_failures_submitted_while_the_root_runs() -> None:
    started, release = threading.Event(), threading.Event()

    @task
    def fail_when_released() -> None:
        started.set()
        release.wait(GATE_SECONDS)
        raise ValueError("late failure")

    a = fail_when_released.submit()
    b = echo.submit(a)
    c = echo.submit({"b": b})
    try:
        assert started.wait(GATE_SECONDS)
        assert b.state.type is StateType.PENDING
        assert c.state.type is StateType.PENDING
    finally:
        release.set()
    _, not_done = wait([a, b, c], timeout=GATE_SECONDS)
    assert not_done == set()
    assert [b.state.name, c.state.name] == ["UpstreamFailed", "UpstreamFailed"]


@pytest.mark.parametrize("length", [50, 500])
def test_a_long_chain_of_waiting_dependents_of_a_failure_all_end(length: int) -> None:
    """Each link ends UpstreamFailed as soon as the one before it does; a long chain
    must not pile those endings onto one call stack and leave the rest PENDING."""
    started, release = threading.Event(), threading.Event()

    @task
    def fail_when_released() -> int:
        started.set()
        release.wait(GATE_SECONDS)
        raise ValueError("root")

    root = fail_when_released.submit()
    links: list[Future[int]] = []
    link: Future[int] = root
    for _ in range(length):
        link = inc.submit(link)
        links.append(link)
    try:
        assert started.wait(GATE_SECONDS)
        assert links[-1].state.type is StateType.PENDING
    finally:
        release.set()
    _, not_done = wait(links, timeout=GATE_SECONDS)
    assert not_done == set()
    assert {f.state.name for f in links} == {"UpstreamFailed"}
    root.result(raise_on_failure=False)


def test_a_long_chain_of_dependents_of_a_cancelled_run_all_end() -> None:
    from baton._runners.thread import ThreadRunner

    blocker_started, blocker_release = threading.Event(), threading.Event()
    seen: dict[str, Any] = {}

    @flow(task_runner=ThreadRunner(max_workers=1))
    def body() -> None:
        blocker = hold.submit(blocker_started, blocker_release, None)
        try:
            assert blocker_started.wait(GATE_SECONDS)
            queued = inc.submit(0)
            links = [queued]
            for _ in range(300):
                links.append(inc.submit(links[-1]))
            seen["cancelled"] = queued.cancel()
            seen["done"], seen["not_done"] = wait(links[1:], timeout=GATE_SECONDS)
            seen["names"] = {f.state.name for f in links[1:]}
        finally:
            blocker_release.set()
        blocker.result()

    body()
    assert seen["cancelled"] is True
    assert seen["not_done"] == set()
    assert seen["names"] == {"UpstreamFailed"}


def test_a_long_chain_released_into_an_inline_runner_completes() -> None:
    """A runner that runs each task inside `submit` completes a run while the previous
    one is still finishing: the chain must not grow the call stack per link."""
    started, release = threading.Event(), threading.Event()
    length = 500
    # The head runs elsewhere (outside the flow), so every link has to wait for it.
    head = hold.submit(started, release, 0)

    @flow(task_runner="sync")
    def body() -> int:
        link: Any = head
        for _ in range(length):
            link = inc.submit(link)
        release.set()
        return typing.cast(int, link.result(timeout=GATE_SECONDS))

    try:
        assert body() == length
    finally:
        release.set()


def test_direct_call_with_a_failed_upstream_raises_upstream_error() -> None:
    upstream = fail.submit("direct")
    with pytest.raises(UpstreamTaskError, match=re.escape(repr(upstream.name))):
        echo(upstream)
    upstream.result(raise_on_failure=False)


def test_upstream_failed_runs_fail_the_flow() -> None:
    @flow
    def careless() -> None:
        echo.submit(fail.submit("unhandled"))

    state = careless(return_state=True)
    assert state.is_failed()
    assert "UpstreamFailed" in (state.message or "")


# -- wait_for ------------------------------------------------------------------------


def test_wait_for_starts_the_run_after_its_upstreams() -> None:
    events: list[str] = []
    lock = threading.Lock()
    releases = {name: threading.Event() for name in ("a", "b")}

    @task
    def upstream(name: str) -> None:
        releases[name].wait(GATE_SECONDS)
        with lock:
            events.append(f"{name} done")

    @task
    def downstream() -> str:
        with lock:
            events.append("c started")
        return "c"

    a, b = upstream.submit("a"), upstream.submit("b")
    c = downstream.submit(wait_for=[a, b])
    try:
        assert c.state.type is StateType.PENDING
        releases["b"].set()
        b.result(timeout=GATE_SECONDS)
        # One upstream still runs: the downstream must not have started.
        assert c.state.type is StateType.PENDING
    finally:
        releases["a"].set()
        releases["b"].set()
    assert c.result(timeout=GATE_SECONDS) == "c"
    assert events == ["b done", "a done", "c started"]


def test_wait_for_a_failed_upstream_is_upstream_failed() -> None:
    ran: list[int] = []

    @task
    def record() -> None:
        ran.append(1)

    bad = fail.submit("wait_for broke")
    downstream = record.submit(wait_for=[inc.submit(1), bad])
    downstream.wait(GATE_SECONDS)
    assert downstream.state.name == "UpstreamFailed"
    assert repr(bad.name) in (downstream.state.message or "")
    assert ran == []
    bad.result(raise_on_failure=False)


def test_wait_for_with_allow_failure_runs() -> None:
    bad = fail.submit("allowed")
    downstream = inc.submit(1, wait_for=[allow_failure(bad)])
    assert downstream.result(timeout=GATE_SECONDS) == 2
    assert bad.state.is_failed()


@pytest.mark.parametrize("how", ["submit", "call", "map"])
@pytest.mark.parametrize("bad", ["future", 3])
def test_wait_for_must_be_a_list(how: str, bad: str | int) -> None:
    wait_for: Any = inc.submit(0) if bad == "future" else bad
    calls = {
        "submit": lambda: inc.submit(1, wait_for=wait_for),
        "call": lambda: inc(1, wait_for=wait_for),
        "map": lambda: inc.map([1, 2], wait_for=wait_for),
    }
    with pytest.raises(TypeError, match=re.escape("wait_for must be a list of futures")):
        calls[how]()


def test_wait_for_on_a_direct_call() -> None:
    started, release = threading.Event(), threading.Event()
    upstreams: list[Future[None]] = []

    @task
    def slow() -> None:
        started.set()
        release.wait(GATE_SECONDS)

    @task
    def upstream_done_when_run() -> bool:
        return upstreams[0].done()

    upstreams.append(slow.submit())
    assert started.wait(GATE_SECONDS)
    # The release comes from another thread, later: a direct call that did not wait
    # would find the upstream still running.
    releaser = threading.Timer(0.05, release.set)
    releaser.start()
    try:
        assert upstream_done_when_run(wait_for=upstreams) is True
    finally:
        release.set()
        releaser.cancel()


# -- limits of the scan ----------------------------------------------------------------


def test_a_container_that_holds_itself_is_passed_as_it_is() -> None:
    @task
    def receive(value: Any) -> Any:
        return value

    cyclic: list[Any] = [1]
    cyclic.append(cyclic)
    received = receive.submit(cyclic).result(timeout=GATE_SECONDS)
    assert received is cyclic
    # Futures beside the cycle are still resolved.
    result = receive.submit({"cycle": cyclic, "n": inc.submit(1)}).result(timeout=GATE_SECONDS)
    assert result["n"] == 2
    assert result["cycle"] is cyclic


def test_a_future_nested_too_deep_to_scan_is_passed_as_it_is() -> None:
    """The scan for upstreams stops at some depth; resolution stops there as well, so a
    future the scan did not see is handed over untouched rather than read unfinished."""
    started, release = threading.Event(), threading.Event()

    @task
    def receive(value: Any) -> Any:
        return value

    upstream = hold.submit(started, release, "deep")
    nested: Any = [upstream]
    for _ in range(100):
        nested = [nested]
    try:
        received = receive.submit(nested).result(timeout=GATE_SECONDS)
    finally:
        release.set()
    for _ in range(100):
        received = received[0]
    assert received == [upstream]
    assert received[0] is upstream
    assert upstream.result(timeout=GATE_SECONDS) == "deep"


def test_a_future_nested_within_the_scan_depth_is_resolved() -> None:
    upstream = inc.submit(1)
    nested: Any = upstream
    for _ in range(40):
        nested = [nested]
    received = echo.submit(nested).result(timeout=GATE_SECONDS)
    for _ in range(40):
        received = received[0]
    assert received == 2
