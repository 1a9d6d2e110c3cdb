"""`Task.map`: broadcasting, `unmapped`, zipping, errors, and bounded lazy maps."""

from __future__ import annotations

import dataclasses
import io
import itertools
import re
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from baton import (
    FlowRunFailed,
    Future,
    FutureList,
    LazyMap,
    MappingError,
    StateType,
    flow,
    quote,
    task,
    unmapped,
)
from baton._runners.thread import ThreadRunner

GATE_SECONDS = 10


@task
def add(x: int, y: int) -> int:
    return x + y


@task
def double(x: int) -> int:
    return 2 * x


@task
def inc(x: int) -> int:
    return x + 1


@task
def receive(item: Any, extra: Any) -> tuple[Any, Any]:
    return item, extra


@task
def hold(started: threading.Event, release: threading.Event, value: object = None) -> object:
    """Signal that the run started, then stay RUNNING until the test releases it."""
    started.set()
    if not release.wait(GATE_SECONDS):
        raise TimeoutError("the test never released this run")
    return value


class ConcurrencyProbe:
    """Counts the runs inside a task at once and remembers the most seen together."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.active = 0
        self.max_active = 0
        self.finished = 0

    def enter(self) -> None:
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)

    def leave(self) -> None:
        with self._lock:
            self.active -= 1
            self.finished += 1


# -- broadcasting and zipping --------------------------------------------------------


def test_map_runs_once_per_item() -> None:
    futures = double.map([1, 2, 3])
    assert isinstance(futures, FutureList)
    assert len(futures) == 3
    assert futures.result() == [2, 4, 6]
    assert double.map(range(4)).result() == [0, 2, 4, 6]
    assert double.map((5,)).result() == [10]


def test_map_over_nothing_makes_no_runs() -> None:
    futures = double.map([])
    assert isinstance(futures, FutureList)
    assert futures.result() == []


def test_non_iterables_are_broadcast() -> None:
    assert add.map([1, 2, 3], 10).result() == [11, 12, 13]
    assert add.map(x=5, y=[1, 2]).result() == [6, 7]


def test_unmapped_broadcasts_an_iterable() -> None:
    @task
    def add_all(x: int, ys: list[int]) -> int:
        return x + sum(ys)

    shared = [10, 20]
    assert add_all.map([1, 2], unmapped(shared)).result() == [31, 32]
    received = receive.map([1, 2], unmapped(shared)).result()
    assert all(extra is shared for _, extra in received)


@pytest.mark.parametrize(
    "static",
    [
        pytest.param("xy", id="str"),
        pytest.param(b"xy", id="bytes"),
        pytest.param(bytearray(b"xy"), id="bytearray"),
        pytest.param({"k": 1, "j": 2}, id="dict"),
        pytest.param(io.StringIO("file contents"), id="file"),
    ],
)
def test_strings_bytes_dicts_and_files_are_not_iterated(static: Any) -> None:
    received = receive.map([1, 2, 3], static).result()
    assert [item for item, _ in received] == [1, 2, 3]
    assert all(extra is static for _, extra in received)


def test_a_string_alone_is_not_something_to_map_over() -> None:
    with pytest.raises(MappingError, match="needs at least one iterable"):
        double.map("abc")


def test_several_mapped_parameters_are_zipped() -> None:
    assert add.map([1, 2, 3], [10, 20, 30]).result() == [11, 22, 33]
    assert add.map(y=(10, 20), x=range(2)).result() == [10, 21]


def test_keyword_mapping_with_a_broadcast_dataclass() -> None:
    @dataclasses.dataclass
    class Dataset:
        name: str

    @dataclasses.dataclass
    class ModelConfig:
        name: str

    @task(task_run_name="train on {dataset.name} with {model_config.name}")
    def train_model(dataset: Dataset, model_config: ModelConfig) -> dict[str, str]:
        return {"dataset": dataset.name, "model": model_config.name}

    @flow
    def evaluate(datasets: list[Dataset], configs: list[ModelConfig]) -> list[Any]:
        futures: list[Future[dict[str, str]]] = []
        for dataset in datasets:
            futures.extend(train_model.map(dataset=dataset, model_config=configs))
        return [(f.name, f.result()) for f in futures]

    results = evaluate(
        [Dataset("customers"), Dataset("orders")],
        [ModelConfig("random_forest"), ModelConfig("gradient_boosting")],
    )
    assert results == [
        (
            "train on customers with random_forest",
            {"dataset": "customers", "model": "random_forest"},
        ),
        (
            "train on customers with gradient_boosting",
            {"dataset": "customers", "model": "gradient_boosting"},
        ),
        ("train on orders with random_forest", {"dataset": "orders", "model": "random_forest"}),
        (
            "train on orders with gradient_boosting",
            {"dataset": "orders", "model": "gradient_boosting"},
        ),
    ]


def test_keyword_only_parameters_can_be_mapped() -> None:
    @task
    def scale(*, value: int, factor: int) -> int:
        return value * factor

    assert scale.map(value=[1, 2, 3], factor=3).result() == [3, 6, 9]


def test_map_checks_the_signature() -> None:
    with pytest.raises(TypeError, match=re.escape("add.map()")):
        add.map([1], [2], [3])


# -- futures in maps -----------------------------------------------------------------


def test_futures_inside_mapped_items_are_resolved() -> None:
    one, two = inc.submit(0), inc.submit(1)
    assert add.map([one, two], 10).result() == [11, 12]

    @task
    def total(values: list[int]) -> int:
        return sum(values)

    assert total.map([[one, 5], [two, one]]).result() == [6, 3]


def test_a_broadcast_future_is_resolved_for_every_run() -> None:
    started, release = threading.Event(), threading.Event()
    upstream = hold.submit(started, release, 100)
    futures = add.map([1, 2, 3], upstream)
    try:
        assert started.wait(GATE_SECONDS)
        assert [f.state.type for f in futures] == [StateType.PENDING] * 3
    finally:
        release.set()
    assert futures.result(timeout=GATE_SECONDS) == [101, 102, 103]


def test_map_over_the_futures_of_another_map() -> None:
    firsts = inc.map([1, 2, 3])
    seconds = double.map(firsts)
    assert isinstance(seconds, FutureList)
    assert seconds.result() == [4, 6, 8]
    assert add.map(firsts, seconds).result() == [6, 9, 12]


def test_map_with_wait_for() -> None:
    started, release = threading.Event(), threading.Event()
    gate = hold.submit(started, release, None)
    futures = double.map([1, 2], wait_for=[gate])
    try:
        assert started.wait(GATE_SECONDS)
        assert [f.state.type for f in futures] == [StateType.PENDING] * 2
    finally:
        release.set()
    assert futures.result(timeout=GATE_SECONDS) == [2, 4]


def test_a_failed_mapped_upstream_fails_only_its_own_run() -> None:
    @task
    def check(x: int) -> int:
        if x == 2:
            raise ValueError("two")
        return x

    downstream = double.map(check.map([1, 2, 3]))
    values = downstream.result(raise_on_failure=False)
    assert values[0] == 2
    assert values[2] == 6
    assert [s.name for s in downstream.states] == ["Completed", "UpstreamFailed", "Completed"]


# -- errors --------------------------------------------------------------------------


def test_map_without_an_iterable_names_the_parameters() -> None:
    with pytest.raises(MappingError) as info:
        add.map(1, 2)
    message = str(info.value)
    assert "add.map()" in message
    assert "x=1" in message
    assert "y=2" in message
    assert isinstance(info.value, ValueError)
    with pytest.raises(MappingError, match=re.escape("item=7, extra=unmapped([1, 2])")):
        receive.map(7, unmapped([1, 2]))


def test_mismatched_lengths_name_each_parameter_and_length() -> None:
    with pytest.raises(MappingError) as info:
        add.map([1, 2, 3], [10, 20])
    message = str(info.value)
    assert "x has 3" in message
    assert "y has 2" in message
    assert "unmapped" in message


def test_mismatched_lazy_iterables_raise_on_the_way() -> None:
    def numbers(n: int) -> Iterator[int]:
        yield from range(n)

    lazy = add.map(numbers(3), numbers(2), max_in_flight=1)
    assert isinstance(lazy, LazyMap)
    got: list[int] = []
    with pytest.raises(MappingError) as info:
        got.extend(future.result() for future in lazy)
    assert got == [0, 2]
    message = str(info.value)
    assert "y ended after 2 items while x went on" in message


def test_mismatched_lazy_iterables_found_while_filling_come_after_the_futures_before() -> None:
    # `.map` fills the lazy map up front: the run it submitted before the lengths
    # parted is handed out first (it ran), then the error is raised.
    lazy = add.map(iter([1]), iter([1, 2, 3]))
    assert next(lazy).result() == 2
    with pytest.raises(MappingError, match="x ended after 1 items while y went on"):
        next(lazy)


def test_an_input_that_raises_before_any_run_went_raises_from_map() -> None:
    def items() -> Iterator[int]:
        raise RuntimeError("input broke at once")
        yield 0  # a generator

    with pytest.raises(RuntimeError, match="input broke at once"):
        double.map(items())


def test_mismatched_lazy_iterables_nobody_iterated_fail_the_flow() -> None:
    @flow(task_runner=ThreadRunner(max_workers=2))
    def body() -> None:
        add.map(iter(range(5)), iter(range(3)), max_in_flight=1)

    state = body(return_state=True)
    assert state.is_failed()
    assert isinstance(state.error, MappingError)
    assert "different lengths" in str(state.error)


def test_mismatched_lazy_iterables_partly_iterated_fail_the_flow() -> None:
    @flow(task_runner=ThreadRunner(max_workers=2))
    def body() -> int:
        lazy = add.map(iter(range(5)), iter(range(2)), max_in_flight=1)
        next(lazy)  # submits the second run
        return next(lazy).result()  # submitting the third finds y at its end

    state = body(return_state=True)
    assert state.is_failed()
    assert isinstance(state.error, MappingError)
    assert "y ended after 2 items while x went on" in str(state.error)


def test_an_error_from_the_input_comes_after_the_futures_before_it() -> None:
    def items() -> Iterator[int]:
        yield 1
        yield 2
        raise RuntimeError("input broke")

    lazy = double.map(items(), max_in_flight=1)
    got: list[int] = []
    with pytest.raises(RuntimeError, match="input broke"):
        got.extend(future.result() for future in lazy)
    assert got == [2, 4]
    assert list(lazy) == []


def test_an_error_from_the_input_while_map_fills_comes_after_the_futures_before_it() -> None:
    # With the default max_in_flight, `.map` submits the first runs itself: those the
    # input gave before it raised are handed out first, and they ran.
    ran: list[int] = []

    @task
    def record(x: int) -> int:
        ran.append(x)
        return x

    def items() -> Iterator[int]:
        yield 1
        yield 2
        raise KeyError("input broke early")

    @flow
    def body() -> tuple[list[int], str]:
        lazy = record.map(items())
        got: list[int] = []
        try:
            got.extend(future.result() for future in lazy)
        except KeyError as exc:
            return got, str(exc)
        return got, "no error"

    assert body() == ([1, 2], "'input broke early'")
    assert sorted(ran) == [1, 2]


def test_a_lazy_map_drained_as_its_flow_ended_says_its_futures_are_gone() -> None:
    @flow
    def body() -> Any:
        return quote(double.map(iter(range(5)), max_in_flight=2))

    lazy = body().unquote()
    assert lazy.submitted == 5
    with pytest.raises(RuntimeError, match="were submitted as its flow ended"):
        lazy.result()
    with pytest.raises(RuntimeError, match="Read the map inside the flow"):
        next(lazy)


def test_an_error_from_an_input_nobody_iterated_fails_the_flow() -> None:
    def items() -> Iterator[int]:
        yield from range(3)
        raise RuntimeError("input broke late")

    @flow(task_runner=ThreadRunner(max_workers=2))
    def body() -> None:
        double.map(items(), max_in_flight=1)

    state = body(return_state=True)
    assert state.is_failed()
    assert isinstance(state.error, RuntimeError)
    assert str(state.error) == "input broke late"


@pytest.mark.parametrize("bad", [0, -1, 2.5, "3", None])
def test_max_in_flight_must_be_a_whole_number(bad: Any) -> None:
    if bad is None:
        assert double.map([1], max_in_flight=bad).result() == [2]
        return
    with pytest.raises(
        MappingError, match=re.escape(f"max_in_flight must be a whole number >= 1, got {bad!r}")
    ):
        double.map([1, 2], max_in_flight=bad)


# -- lazy maps -----------------------------------------------------------------------


def test_a_generator_gives_a_lazy_map() -> None:
    lazy = double.map(x for x in range(3))
    assert isinstance(lazy, LazyMap)
    assert lazy.result() == [0, 2, 4]


def test_max_in_flight_on_a_list_gives_a_lazy_map() -> None:
    lazy = double.map([1, 2, 3], max_in_flight=2)
    assert isinstance(lazy, LazyMap)
    assert lazy.max_in_flight == 2
    assert lazy.result() == [2, 4, 6]


@pytest.mark.parametrize("bound", [1, 3])
def test_lazy_map_keeps_at_most_max_in_flight_runs_unfinished(bound: int) -> None:
    probe = ConcurrencyProbe()
    # Runs wait for each other in groups of `bound`, so `bound` of them are in the task
    # together; a map that let more through would show more at once.
    barrier = threading.Barrier(bound, timeout=GATE_SECONDS)
    pulled_ahead: list[int] = []
    total = 10 * bound

    def items() -> Iterator[int]:
        for i in range(total):
            # Item i is pulled after i runs were submitted; at most `bound` of those
            # may be unfinished.
            pulled_ahead.append(i - probe.finished)
            yield i

    @task
    def work(i: int) -> int:
        probe.enter()
        try:
            barrier.wait()
            return i
        finally:
            probe.leave()

    @flow(task_runner=ThreadRunner(max_workers=bound + 4))
    def body() -> list[int]:
        lazy = work.map(items(), max_in_flight=bound)
        return [future.result() for future in lazy]

    assert body() == list(range(total))
    assert probe.max_active == bound
    assert max(pulled_ahead) <= bound


def test_lazy_map_yields_futures_in_input_order() -> None:
    last_done = threading.Event()
    finished: list[int] = []
    lock = threading.Lock()

    @task
    def work(i: int) -> int:
        # The first item finishes only after the last one: completion order differs
        # from input order.
        if i == 0 and not last_done.wait(GATE_SECONDS):
            raise TimeoutError("item 3 never finished")
        with lock:
            finished.append(i)
        if i == 3:
            last_done.set()
        return i

    @flow(task_runner=ThreadRunner(max_workers=4))
    def body() -> list[int]:
        lazy = work.map((i for i in range(4)), max_in_flight=4)
        return [future.result() for future in lazy]

    assert body() == [0, 1, 2, 3]
    assert finished.index(3) < finished.index(0)


def test_lazy_map_result_collects_everything() -> None:
    @flow
    def body() -> list[int]:
        lazy = double.map((i for i in range(100)), max_in_flight=7)
        assert isinstance(lazy, LazyMap)
        return lazy.result()

    assert body() == [2 * i for i in range(100)]


def test_lazy_map_wait() -> None:
    lazy = double.map(iter(range(10)), max_in_flight=3)
    done, not_done = lazy.wait()
    assert not_done == set()
    assert sorted(f.result() for f in done) == [2 * i for i in range(10)]


def test_a_lazy_map_nobody_iterated_still_runs_to_the_end() -> None:
    probe = ConcurrencyProbe()
    seen: dict[str, int] = {}

    @task
    def side_effect(i: int) -> None:
        probe.enter()
        probe.leave()

    @flow
    def body() -> None:
        lazy = side_effect.map((i for i in range(50)), max_in_flight=5)
        seen["submitted_at_first"] = lazy.submitted

    assert body() is None
    assert seen["submitted_at_first"] == 5
    assert probe.finished == 50


def test_a_partly_iterated_lazy_map_stops_when_the_flow_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    probe = ConcurrencyProbe()

    @task
    def side_effect(i: int) -> int:
        probe.enter()
        probe.leave()
        return i

    @flow
    def body() -> list[int]:
        lazy = side_effect.map(iter(range(40)), max_in_flight=4)
        return [next(lazy).result() for _ in range(3)]

    with caplog.at_level("INFO", logger="baton"):
        assert body() == [0, 1, 2]
    # The three read, and the four kept ahead of the reader: no more.
    assert probe.finished == 7
    assert "7 run(s) had been submitted and nothing read the map further" in caplog.text


def test_a_lazy_map_over_an_endless_input_read_in_part_lets_the_flow_return() -> None:
    @flow
    def body() -> list[int]:
        lazy = double.map(itertools.count(), max_in_flight=5)
        return [next(lazy).result() for _ in range(5)]

    assert body() == [0, 2, 4, 6, 8]


def test_failures_in_a_lazy_map_nobody_iterated_fail_the_flow() -> None:
    @task
    def breaks(i: int) -> None:
        if i == 7:
            raise ValueError("seven")

    @flow
    def body() -> None:
        breaks.map(iter(range(20)), max_in_flight=3)

    with pytest.raises(FlowRunFailed, match="nothing in the flow handled"):
        body()


def test_map_over_a_lazy_map() -> None:
    @flow
    def body() -> list[int]:
        firsts = inc.map(iter(range(20)), max_in_flight=3)
        return double.map(firsts, max_in_flight=2).result()

    assert body() == [2 * (i + 1) for i in range(20)]


def test_maps_work_outside_a_flow() -> None:
    assert double.map([1, 2, 3]).result() == [2, 4, 6]
    lazy = double.map((i for i in range(5)), max_in_flight=2)
    assert [f.result() for f in lazy] == [0, 2, 4, 6, 8]
