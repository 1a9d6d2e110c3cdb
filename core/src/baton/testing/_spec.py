"""What each conformance test needs: the kit level it belongs to and the capabilities it tests."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from baton._runner import Capability

__all__ = ["LATEST_LEVEL", "Spec", "conformance", "spec_of"]

LATEST_LEVEL = 3
"""The highest conformance level this kit has tests for.

Levels only grow: a test added in a later release of the kit belongs to a new
level, so a plugin that pins ``conformance_level`` keeps passing until it opts in.

- Level 1: submitting, mapping, futures, failures, retries, timeouts, crashes,
  cancellation, async and nested runs, pickling, scale, random task graphs.
- Level 2: the same program ends in the same states on every runner: a failing
  subtask nobody read fails the flow, crashed runs are retried by the one rule, a
  hard timeout stops work blocked in C, a run on a worker reads RUNNING, and tasks
  defined in a script's ``__main__`` run on the runner.
- Level 3: priorities and resources: a run waits while the resource it needs is
  held to capacity, a higher-priority run gets a freed resource first, and a request
  no worker can satisfy is an error at submit. Concurrency limits hold for tagged
  runs (also runs submitted on workers) and for `baton.concurrency` blocks, untagged
  runs are not held back, a tagged subtask of a slot holder finishes, rate limits
  space calls, and an undeclared limit is an error.
"""

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Spec:
    level: int
    requires: frozenset[Capability]
    excludes: dict[Capability, str]
    concurrent: bool | str
    manages_runner: bool
    by_name: bool = False


def conformance(
    *,
    level: int = 1,
    requires: tuple[Capability, ...] = (),
    excludes: dict[Capability, str] | None = None,
    concurrent: bool | str = False,
    manages_runner: bool = False,
    by_name: bool = False,
) -> Callable[[F], F]:
    """Attach a test's needs to it.

    `requires`: capabilities the runner must declare, else the test is skipped.
    `excludes`: capabilities under which the test does not apply, with why.
    `concurrent`: the test needs two runs in flight at once (or, given as text,
    what else it needs while a run is in flight, for the reason of its skip on a
    runner that executes each run inside `submit`).
    `manages_runner`: the test starts and shuts the runner down itself.
    `by_name`: the test selects the runner by name in a new Python process, so it
    needs the `runner_name` fixture.
    """
    if not 1 <= level <= LATEST_LEVEL:
        raise ValueError(f"level must be between 1 and {LATEST_LEVEL}, got {level}")
    spec = Spec(
        level, frozenset(requires), dict(excludes or {}), concurrent, manages_runner, by_name
    )

    def mark(test: F) -> F:
        test.__baton_conformance__ = spec  # type: ignore[attr-defined]
        return test

    return mark


def spec_of(test: object) -> Spec | None:
    spec = getattr(test, "__baton_conformance__", None)
    return spec if isinstance(spec, Spec) else None
