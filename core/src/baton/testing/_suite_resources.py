"""Conformance tests (level 3): priorities and resources. A run never starts while the
resource it asks for is held to capacity, a higher-priority run waiting for a resource
gets it first, and a request the runner can never satisfy is an error at submit."""

from __future__ import annotations

from typing import TYPE_CHECKING

from baton import Capability, InvalidOptionsError
from baton.testing._spec import conformance
from baton.testing._tasks import hold

if TYPE_CHECKING:
    from baton import Task
    from baton.testing._kit import Kit

__all__ = ["ResourceTests"]


def _needing(kit: Kit, factor: float = 1.0) -> tuple[str, Task[..., tuple[int, int]]]:
    """The kit's resource, and `hold` asking for its whole capacity (times `factor`)."""
    assert kit.resource is not None  # the kit fixture skips the test otherwise
    name, capacity = kit.resource
    needy: Task[..., tuple[int, int]] = hold.with_options(resources={name: capacity * factor})
    return name, needy


class ResourceTests:
    @conformance(level=3, requires=(Capability.RESOURCES,), concurrent=True)
    def test_a_run_waits_while_the_resource_it_needs_is_held(self, kit: Kit) -> None:
        """Two runs that each need the whole capacity of a resource never overlap, while a
        run that needs nothing runs meanwhile."""
        rv = kit.rv
        _, needy = _needing(kit)

        def body() -> tuple[bool, tuple[int, int], tuple[int, int]]:
            first = needy.submit(rv, "first", "release-first")
            rv.wait("started-first")
            second = needy.submit(rv, "second")
            hold.submit(rv, "free").result()  # submitted after `second`, needs nothing
            second_started_early = rv.is_set("started-second")
            rv.signal("release-first")
            return second_started_early, first.result(), second.result()

        second_started_early, (_, first_end), (second_start, _) = kit.run(body)
        assert not second_started_early, (
            "rule: a run whose resource is held to capacity waits; but it started while "
            "another run held the whole capacity"
        )
        assert second_start >= first_end, (
            "rule: runs that each need the whole capacity of a resource never overlap"
        )

    @conformance(level=3, requires=(Capability.RESOURCES, Capability.PRIORITIES), concurrent=True)
    def test_the_higher_priority_run_gets_a_freed_resource_first(self, kit: Kit) -> None:
        """With the resource held, a low- then a high-priority run wait for it; once it is
        free, the high one runs first, and the low one only after it."""
        rv = kit.rv
        _, needy = _needing(kit)

        def body() -> tuple[tuple[int, int], tuple[int, int]]:
            needy.submit(rv, "first", "release-first")
            rv.wait("started-first")
            low = needy.submit(rv, "low", priority=1)
            high = needy.submit(rv, "high", priority=10)
            hold.submit(rv, "free").result()  # both wait by now
            rv.signal("release-first")
            return low.result(), high.result()

        (low_start, _), (high_start, high_end) = kit.run(body)
        assert high_start < low_start, (
            "rule: among runs waiting for a resource, the higher priority starts first; "
            "but the run of priority 1 started before the one of priority 10"
        )
        assert low_start >= high_end, (
            "rule: runs that each need the whole capacity of a resource never overlap"
        )

    @conformance(level=3, requires=(Capability.RESOURCES,))
    def test_a_request_no_worker_can_satisfy_is_an_error_at_submit(self, kit: Kit) -> None:
        """More than the runner has in all, or a resource it does not have: an error raised
        by `.submit`, naming the resource, rather than a run that waits forever."""
        name, too_much = _needing(kit, factor=2)
        unknown = hold.with_options(resources={"baton-kit-no-such-resource": 1})
        rv = kit.rv

        def body() -> list[str | None]:
            messages: list[str | None] = []
            for needy in (too_much, unknown):
                try:
                    future = needy.submit(rv, "never")
                except InvalidOptionsError as exc:
                    messages.append(str(exc))
                else:
                    future.cancel()  # or the flow would wait for it forever
                    messages.append(None)
            return messages

        over, missing = kit.run(body)
        for message, what in (
            (over, f"more {name!r} than the runner has"),
            (missing, "a resource the runner does not have"),
        ):
            assert message is not None, (
                f"rule: a run asking for {what} is an error (InvalidOptionsError) raised by "
                ".submit; but .submit returned a future"
            )
        assert name in str(over), f"rule: the error names the resource asked for; got {over!r}"
        assert "baton-kit-no-such-resource" in str(missing), (
            f"rule: the error names the resource asked for; got {missing!r}"
        )
        assert not rv.is_set("started-never"), "rule: a run that can never start does not run"
