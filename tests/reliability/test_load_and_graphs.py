"""Load and deep graphs: large maps, a long dependency chain, a wide fan-out into a wide
fan-in. Every future ends in a final state and every result is checked.

Sizes, per runner (in the test ids too)::

    runner   map      chain   fan-out -> fan-in
    thread   100,000  10,000  1,000 -> 1,000
    sync     100,000  10,000  1,000 -> 1,000
    process   20,000  10,000  1,000 -> 1,000
    dask      10,000   1,000  1,000 -> 1,000
    ray       10,000   2,000  1,000 -> 1,000

On dask and ray each link of a chain is a cluster task that waits for the previous
one to be stored: tens of links a second on two workers, hence the shorter chains.
"""

from __future__ import annotations

from collections import Counter

import pytest
from baton import Future, StateType, TaskRunner, UpstreamTaskError, flow, unmapped
from reliability_support import Report, runners
from reliability_tasks import add, inc, total

pytestmark = pytest.mark.slow

MAP_SIZES = {"thread": 100_000, "sync": 100_000, "process": 20_000, "dask": 10_000, "ray": 10_000}
CHAIN_SIZES = {"thread": 10_000, "sync": 10_000, "process": 10_000, "dask": 1_000, "ray": 2_000}
FAN = 1_000


def _ids(sizes: dict[str, int]) -> list[str]:
    return [f"{name}-{sizes[name]}" for name in runners()]


@pytest.mark.parametrize(
    "runner_name", runners(), indirect=True, scope="module", ids=_ids(MAP_SIZES)
)
def test_a_large_map_completes_with_every_result_correct(
    runner: TaskRunner, runner_name: str, report: Report
) -> None:
    n = MAP_SIZES[runner_name]

    @flow(task_runner=runner)
    def large_map() -> tuple[list[int], Counter[StateType]]:
        futures = inc.map(range(n))
        results = futures.result()
        return results, Counter(state.type for state in futures.states)

    results, states = large_map()
    assert results == list(range(1, n + 1))
    assert states == {StateType.COMPLETED: n}
    report.record("map", runner_name, runs=n, completed=states[StateType.COMPLETED])


@pytest.mark.parametrize(
    "runner_name", runners(), indirect=True, scope="module", ids=_ids(CHAIN_SIZES)
)
def test_a_long_dependency_chain_completes(
    runner: TaskRunner, runner_name: str, report: Report
) -> None:
    n = CHAIN_SIZES[runner_name]

    @flow(task_runner=runner)
    def chain() -> tuple[int, Counter[StateType]]:
        link: Future[int] = inc.submit(0)
        links = [link]
        for _ in range(n - 1):
            link = inc.submit(link)
            links.append(link)
        value = link.result()
        return value, Counter(f.state.type for f in links)

    value, states = chain()
    assert value == n
    assert states == {StateType.COMPLETED: n}
    report.record("chain", runner_name, runs=n, completed=states[StateType.COMPLETED])


@pytest.mark.parametrize("runner_name", runners(), indirect=True, scope="module")
def test_a_wide_fan_out_feeds_a_wide_fan_in(
    runner: TaskRunner, runner_name: str, report: Report
) -> None:
    """One run fans out to 1,000 runs, whose 1,000 results one run sums; a second fan-in
    over the same runs plus one failed run ends UpstreamFailed, naming the failed run."""

    @flow(task_runner=runner)
    def fan() -> tuple[int, Counter[StateType], str, BaseException | None]:
        root = inc.submit(0)
        spread = add.map(unmapped(root), range(FAN))
        summed = total.submit(list(spread))
        broken = add.submit(root, "not a number")
        blocked = total.submit([*spread, broken])
        value = summed.result()
        blocked.wait()
        states = Counter(f.state.type for f in [root, *spread, summed])
        assert broken.state.is_failed()
        return value, states, blocked.state.name, blocked.state.error

    value, states, blocked_name, blocked_error = fan()
    assert value == sum(1 + i for i in range(FAN))
    assert states == {StateType.COMPLETED: FAN + 2}
    assert blocked_name == "UpstreamFailed"
    assert isinstance(blocked_error, UpstreamTaskError)
    assert "add-" in str(blocked_error)
    assert isinstance(blocked_error.__cause__, TypeError)
    report.record("fan-out/fan-in", runner_name, runs=FAN + 4, fan_out=FAN, fan_in=FAN)
