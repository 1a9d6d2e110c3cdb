"""What each conformance test needs: the kit level it belongs to and the capabilities it tests."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from baton._runner import Capability

__all__ = ["LATEST_LEVEL", "Spec", "conformance", "spec_of"]

LATEST_LEVEL = 1
"""The highest conformance level this kit has tests for.

Levels only grow: a test added in a later release of the kit belongs to a new
level, so a plugin that pins ``conformance_level`` keeps passing until it opts in.
"""

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Spec:
    level: int
    requires: frozenset[Capability]
    excludes: dict[Capability, str]
    concurrent: bool
    manages_runner: bool


def conformance(
    *,
    level: int = 1,
    requires: tuple[Capability, ...] = (),
    excludes: dict[Capability, str] | None = None,
    concurrent: bool = False,
    manages_runner: bool = False,
) -> Callable[[F], F]:
    """Attach a test's needs to it.

    `requires`: capabilities the runner must declare, else the test is skipped.
    `excludes`: capabilities under which the test does not apply, with why.
    `concurrent`: the test needs two runs in flight at once.
    `manages_runner`: the test starts and shuts the runner down itself.
    """
    if not 1 <= level <= LATEST_LEVEL:
        raise ValueError(f"level must be between 1 and {LATEST_LEVEL}, got {level}")
    spec = Spec(level, frozenset(requires), dict(excludes or {}), concurrent, manages_runner)

    def mark(test: F) -> F:
        test.__baton_conformance__ = spec  # type: ignore[attr-defined]
        return test

    return mark


def spec_of(test: object) -> Spec | None:
    spec = getattr(test, "__baton_conformance__", None)
    return spec if isinstance(spec, Spec) else None
