"""Conformance tests: `.submit`, `.map`, and futures passed as arguments."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import pytest

from baton import (
    Capability,
    Future,
    FutureList,
    LazyMap,
    MappingError,
    State,
    StateType,
    quote,
    unmapped,
)
from baton.testing._spec import conformance
from baton.testing._tasks import (
    Pair,
    Payload,
    add,
    add_all,
    concat,
    echo,
    inc,
    is_future,
    marker_set,
    scale,
    square,
    stoppable,
)

if TYPE_CHECKING:
    from baton.testing._kit import Kit

__all__ = ["SubmitAndMapTests"]


class SubmitAndMapTests:
    @conformance()
    def test_submit_returns_a_future_with_the_result(self, kit: Kit) -> None:
        def body() -> tuple[bool, int, StateType, bool]:
            future = add.submit(1, 2)
            return isinstance(future, Future), future.result(), future.state.type, future.done()

        is_a_future, result, state, done = kit.run(body)
        assert is_a_future, "rule: .submit() returns a baton.Future"
        assert result == 3, "rule: future.result() is the task's return value"
        assert state is StateType.COMPLETED, "rule: a run that returned ends COMPLETED"
        assert done, "rule: a future whose result was read is done()"

    @conformance()
    def test_submit_passes_keywords_and_defaults(self, kit: Kit) -> None:
        def body() -> list[int]:
            return [
                scale.submit(3).result(),
                scale.submit(3, factor=4).result(),
                scale.submit(3, 5, offset=1).result(),
            ]

        assert kit.run(body) == [6, 12, 16], "rule: arguments reach the task as given"

    @conformance()
    def test_wrong_arguments_raise_at_submit(self, kit: Kit) -> None:
        def body() -> None:
            with pytest.raises(TypeError, match=r"add\(\)"):
                add.submit(1)

        kit.run(body)

    @conformance()
    def test_direct_call_in_a_flow_returns_the_result(self, kit: Kit) -> None:
        def body() -> tuple[int, StateType]:
            state = cast("State", add(2, 3, return_state=True))
            return add(2, 3), state.type

        assert kit.run(body) == (5, StateType.COMPLETED), "rule: calling a task runs it"

    @conformance()
    def test_map_returns_results_in_input_order(self, kit: Kit) -> None:
        def body() -> tuple[bool, list[int]]:
            futures = square.map(range(200))
            return isinstance(futures, FutureList), futures.result()

        is_list, results = kit.run(body)
        assert is_list, "rule: .map() over a sized iterable returns a FutureList"
        assert results == [i * i for i in range(200)], (
            "rule: .map() results come back in the order of its inputs"
        )

    @conformance()
    def test_map_broadcasts_non_iterables_strings_and_bytes(self, kit: Kit) -> None:
        def body() -> tuple[list[int], list[str], list[bytes]]:
            return (
                add.map([1, 2, 3], 10).result(),
                concat.map(["a", "b"], "xy").result(),
                concat.map([b"a", b"b"], b"!").result(),
            )

        numbers, strings, data = kit.run(body)
        assert numbers == [11, 12, 13], "rule: a non-iterable argument goes to every run"
        assert strings == ["axy", "bxy"], "rule: a string is not mapped over"
        assert data == [b"a!", b"b!"], "rule: bytes are not mapped over"

    @conformance()
    def test_map_unmapped_broadcasts_an_iterable(self, kit: Kit) -> None:
        def body() -> list[int]:
            return add_all.map([1, 2], unmapped([10, 20])).result()

        assert kit.run(body) == [31, 32], "rule: unmapped(x) gives every run the whole of x"

    @conformance()
    def test_map_over_keyword_iterables(self, kit: Kit) -> None:
        def body() -> list[int]:
            return add.map(x=[1, 2], y=[10, 20]).result()

        assert kit.run(body) == [11, 22], "rule: keyword iterables are mapped together"

    @conformance()
    def test_map_with_mismatched_lengths_names_the_parameters(self, kit: Kit) -> None:
        def body() -> None:
            with pytest.raises(MappingError, match=r"x has 2, y has 3"):
                add.map([1, 2], [1, 2, 3])

        kit.run(body)

    @conformance()
    def test_map_without_an_iterable_is_an_error(self, kit: Kit) -> None:
        def body() -> None:
            with pytest.raises(MappingError, match=r"needs at least one iterable"):
                add.map(1, 2)

        kit.run(body)

    @conformance()
    def test_map_over_an_empty_iterable(self, kit: Kit) -> None:
        def body() -> tuple[int, list[int]]:
            futures = inc.map([])
            assert isinstance(futures, FutureList), "rule: .map() over a list gives a FutureList"
            return len(futures), futures.result()

        assert kit.run(body) == (0, []), "rule: mapping over nothing runs nothing"

    @conformance()
    def test_map_over_a_generator_with_max_in_flight(self, kit: Kit) -> None:
        def body() -> tuple[bool, list[int]]:
            lazy = square.map((i for i in range(30)), max_in_flight=4)
            return isinstance(lazy, LazyMap), lazy.result()

        is_lazy, results = kit.run(body)
        assert is_lazy, "rule: .map() over a generator returns a LazyMap"
        assert results == [i * i for i in range(30)], "rule: a LazyMap keeps input order"

    @conformance()
    def test_map_over_futures(self, kit: Kit) -> None:
        def body() -> list[int]:
            return square.map(inc.map(range(5))).result()

        assert kit.run(body) == [1, 4, 9, 16, 25], "rule: mapped futures are resolved one by one"

    @conformance()
    def test_futurelist_result_wait_and_states(self, kit: Kit) -> None:
        def body() -> tuple[int, int, list[StateType], list[int]]:
            futures = inc.map([1, 2, 3])
            assert isinstance(futures, FutureList), "rule: .map() over a list gives a FutureList"
            done, not_done = futures.wait()
            return len(done), len(not_done), [s.type for s in futures.states], futures.result()

        done, not_done, states, results = kit.run(body)
        assert (done, not_done) == (3, 0), "rule: FutureList.wait() waits for every run"
        assert states == [StateType.COMPLETED] * 3
        assert results == [2, 3, 4]

    @conformance()
    def test_a_future_as_argument_is_replaced_by_its_result(self, kit: Kit) -> None:
        def body() -> int:
            return add.submit(square.submit(3), y=inc.submit(1)).result()

        assert kit.run(body) == 11, "rule: a future argument is replaced by its result"

    @conformance()
    def test_futures_nested_in_collections_are_resolved(self, kit: Kit) -> None:
        def body() -> Any:
            one, two = inc.submit(0), inc.submit(1)
            value = {
                "list": [one, [two]],
                "tuple": (one, (two,)),
                "dict": {"k": two},
                "set": {one},
                "frozenset": frozenset({two}),
                one: "a future as a key",
            }
            return echo.submit(value).result()

        assert kit.run(body) == {
            "list": [1, [2]],
            "tuple": (1, (2,)),
            "dict": {"k": 2},
            "set": {1},
            "frozenset": frozenset({2}),
            1: "a future as a key",
        }, "rule: futures in lists, tuples, dicts, sets are resolved before the run"

    @conformance()
    def test_futures_in_dataclasses_and_pydantic_models_are_resolved(self, kit: Kit) -> None:
        def body() -> tuple[Any, Any]:
            one, two = inc.submit(0), inc.submit(1)
            pair = echo.submit(Pair(one, [two])).result()
            payload = echo.submit(Payload(value=one, items=[two, 3])).result()
            return pair, payload

        pair, payload = kit.run(body)
        assert pair == Pair(1, [2]), "rule: futures in dataclass fields are resolved"
        assert payload == Payload(value=1, items=[2, 3]), (
            "rule: futures in pydantic model fields are resolved"
        )

    @conformance(
        excludes={Capability.PROCESSES: "a future cannot travel to another process"},
    )
    def test_quote_passes_a_future_itself(self, kit: Kit) -> None:
        def body() -> tuple[bool, list[int]]:
            future = inc.submit(1)
            return is_future.submit(quote(future)).result(), echo.submit(quote([1, 2])).result()

        passed_future, quoted = kit.run(body)
        assert passed_future, "rule: quote(x) passes x untouched, a future included"
        assert quoted == [1, 2]

    @conformance(concurrent=True)
    def test_wait_for_runs_after_its_upstream(self, kit: Kit) -> None:
        rv = kit.rv

        def body() -> tuple[bool, str]:
            first = stoppable.submit(rv, "first", "first ran")
            after = marker_set.submit(rv, "finished-first", wait_for=[first])
            rv.signal("release-first")
            return after.result(), first.result()

        finished_before, first = kit.run(body)
        assert finished_before, "rule: a run with wait_for=[f] starts only after f is final"
        assert first == "first ran"

    @conformance()
    def test_wait_for_takes_a_list(self, kit: Kit) -> None:
        def body() -> None:
            upstream = inc.submit(1)
            with pytest.raises(TypeError, match=r"wait_for must be a list of futures"):
                inc.submit(2, wait_for=upstream)
            upstream.result()

        kit.run(body)

    @conformance()
    def test_large_values_round_trip(self, kit: Kit) -> None:
        blob = bytes(range(256)) * 8192  # 2 MiB

        def body() -> list[bytes]:
            return echo.map([blob, blob[::-1]]).result()

        assert kit.run(body) == [blob, blob[::-1]], "rule: arguments and results arrive whole"

    @conformance()
    def test_runs_have_distinct_ids_and_names(self, kit: Kit) -> None:
        def body() -> tuple[list[int], list[str]]:
            futures = inc.map(range(20))
            futures.result()
            return [f.task_run_id for f in futures], [f.name for f in futures]

        ids, names = kit.run(body)
        assert len(set(ids)) == 20, "rule: every run has its own task_run_id"
        assert all(name.startswith("inc-") for name in names), names
