"""Conformance tests (level 3): concurrency limits and rate limits.

Concurrency is counted from the start and end times that the runs record
themselves; rate limits from the times the calls were let through. No test sleeps
to prove anything: a run's work takes time only so that runs could overlap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from baton import Capability, LimitError, StateType, wait
from baton.testing._spec import conformance
from baton.testing._tasks_limits import (
    LIMIT_TAG,
    busy_interval,
    concurrency_block,
    gated_interval,
    held_interval,
    limited_parent,
    map_limited,
    rate_limited_call,
    signal_free,
    unknown_limit,
)

if TYPE_CHECKING:
    from baton.testing._kit import Kit

__all__ = ["LimitTests", "most_at_once"]


def most_at_once(intervals: list[tuple[float, float]]) -> int:
    """The most intervals that overlap at one instant (an end before a start at a tie)."""
    events = sorted(
        [(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals],
        key=lambda event: (event[0], event[1]),
    )
    running = most = 0
    for _, step in events:
        running += step
        most = max(most, running)
    return most


class LimitTests:
    """Concurrency limits by tag, `baton.concurrency` and `baton.rate_limit`."""

    @conformance(level=3)
    def test_a_concurrency_limit_bounds_the_tagged_runs_running_at_once(self, kit: Kit) -> None:
        def body() -> list[tuple[float, float]]:
            return busy_interval.map(range(8)).result()

        intervals = kit.run(body, concurrency_limits={LIMIT_TAG: 2})
        assert len(intervals) == 8
        assert most_at_once(intervals) <= 2, (
            f"rule: at most 2 runs tagged {LIMIT_TAG!r} run at once under "
            f"concurrency_limits={{{LIMIT_TAG!r}: 2}}; the runs' own times overlap "
            f"{most_at_once(intervals)} deep: {sorted(intervals)}"
        )

    @conformance(level=3, concurrent=True)
    def test_runs_waiting_for_a_slot_are_pending_with_the_reason(self, kit: Kit) -> None:
        rv = kit.rv

        def body() -> tuple[list[Any], list[tuple[float, float]]]:
            runs = [gated_interval.submit(rv, index, "open") for index in range(5)]
            # The first two hold the slots until the gate opens: the rest wait for them.
            waiting = [(f.state.type, f.state.name) for f in runs[2:]]
            rv.signal("open")
            return waiting, [future.result() for future in runs]

        waiting, intervals = kit.run(body, concurrency_limits={LIMIT_TAG: 2})
        assert waiting == [(StateType.PENDING, "AwaitingConcurrencySlot")] * 3, (
            "rule: a run waiting for a concurrency slot is PENDING, named "
            f"AwaitingConcurrencySlot; got {waiting}"
        )
        assert most_at_once(intervals) <= 2, (
            f"rule: at most 2 runs of a limit of 2 run at once; {sorted(intervals)}"
        )

    @conformance(level=3, concurrent=True)
    def test_untagged_runs_are_not_held_back_by_a_limit(self, kit: Kit) -> None:
        rv = kit.rv

        def body() -> list[str]:
            # The only slot is held until an untagged run, submitted after a tagged run
            # that waits for the slot, has run: it must not queue behind that one.
            holder = held_interval.submit(rv, "untagged-ran")
            queued = held_interval.submit(rv, "untagged-ran")
            free = signal_free.submit(rv, "untagged-ran")
            return [holder.result(), queued.result(), free.result()]

        got = kit.run(body, concurrency_limits={LIMIT_TAG: 1})
        assert got == ["held", "held", "untagged-ran"], (
            f"rule: untagged runs are not held back by a concurrency limit; got {got}"
        )

    @conformance(level=3, requires=(Capability.NESTED,))
    def test_a_tagged_subtask_of_a_slot_holder_finishes_under_a_limit_of_one(
        self, kit: Kit
    ) -> None:
        def body() -> list[int]:
            return limited_parent.map([1, 2, 3]).result()

        got = kit.run(body, concurrency_limits={LIMIT_TAG: 1})
        assert got == [20, 30, 40], (
            "rule: a tagged task that waits for a tagged subtask finishes under a limit "
            f"of 1 (the subtask shares its slot); got {got}"
        )

    @conformance(level=3, requires=(Capability.NESTED, Capability.LIMITS))
    def test_tagged_runs_submitted_on_a_worker_share_the_limit(self, kit: Kit) -> None:
        def body() -> list[tuple[float, float]]:
            # Two untagged parents each map tagged runs from inside their task: on a
            # runner with workers, these are submitted there, yet counted together.
            parents = map_limited.map([3, 3], 0.2)
            return [interval for runs in parents.result() for interval in runs]

        # A limit of 1: a runner with two workers could not tell a limit of 2 from none.
        intervals = kit.run(body, concurrency_limits={LIMIT_TAG: 1})
        assert len(intervals) == 6
        assert most_at_once(intervals) == 1, (
            "rule: tagged runs submitted inside tasks, on any worker, count against the "
            f"flow's limit (here 1); the runs' own times overlap: {sorted(intervals)}"
        )

    @conformance(level=3, requires=(Capability.LIMITS,))
    def test_concurrency_blocks_hold_the_limit_wherever_the_tasks_run(self, kit: Kit) -> None:
        def body() -> list[tuple[float, float, int]]:
            return concurrency_block.map("kit-block", range(6), 0.2).result()

        runs = kit.run(body, concurrency_limits={"kit-block": 1})
        intervals = [(start, end) for start, end, _ in runs]
        assert len(intervals) == 6
        assert most_at_once(intervals) == 1, (
            "rule: baton.concurrency blocks hold the flow's limit (here 1) wherever the "
            f"tasks run; the blocks' own times overlap: {sorted(intervals)}"
        )

    @conformance(level=3, requires=(Capability.LIMITS,))
    def test_a_rate_limit_spaces_the_calls(self, kit: Kit) -> None:
        import time

        def body() -> tuple[float, list[float]]:
            before = time.monotonic()
            return before, rate_limited_call.map("kit-rate", range(8)).result()

        before, made = kit.run(body, rate_limits={"kit-rate": "4/0.5s"})
        made.sort()
        # At most 4 calls in any half second: the k-th call (from 0) is made no sooner
        # than (k // 4) half seconds after the flow began to map them.
        for k, at in enumerate(made):
            assert at - before >= (k // 4) * 0.5 - 0.001, (
                "rule: under rate '4/0.5s' at most 4 calls go through in any half second; "
                f"call {k} went {at - before:.3f} s after the first could: "
                f"{[round(m - before, 3) for m in made]}"
            )

    @conformance(level=3, requires=(Capability.LIMITS,))
    def test_an_undeclared_limit_name_fails_the_run_saying_what_to_declare(self, kit: Kit) -> None:
        def body() -> Any:
            future = unknown_limit.submit("kit-undeclared")
            wait([future])
            return future.state

        state = kit.run(body, concurrency_limits={"kit-other": 1})
        assert state.type is StateType.FAILED, (
            f"rule: a concurrency limit the flow does not declare fails the run; got {state!r}"
        )
        error = state.error
        assert isinstance(error, LimitError) or type(error).__name__ in (
            "LimitError",
            "RemoteTaskError",
        ), repr(error)
        assert "kit-undeclared" in str(error)
        assert "concurrency_limits" in str(error)
