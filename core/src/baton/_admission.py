"""Admission of task runs under a flow run's concurrency limits.

The scope of a flow run with limits gives each run that carries a limited tag an
`Admission` and takes its slots before the runner sees it; a run that holds slots
shares them with the runs it submits (they are admitted under its slot), so a
limit never deadlocks a parent that waits for its own subtasks.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable, Mapping
from typing import Protocol, final

__all__ = [
    "AWAITING_SLOT",
    "Admission",
    "Limiter",
    "acquire_blocking",
    "acquire_later",
    "admission_for",
    "held_limits",
    "holding",
    "let_go",
]

AWAITING_SLOT = "AwaitingConcurrencySlot"
"""The name of the PENDING state of a run that waits for a concurrency slot."""


class Limiter(Protocol):
    """What keeps a flow run's concurrency and rate limits: the flow's own `LocalLimiter`
    in its process, or a client of it on a worker (`RunLimits.limiter()`).

    Slots are asked for as ``{limit name: count}``. `acquire` takes them at once
    (returns None) or queues the request (returns a ticket) and calls `granted()`
    from another thread once they are held; `cancel(ticket)` withdraws a queued
    request (False if it was granted meanwhile: `granted` then runs, and the caller
    must `release`). `reserve` books one call of a rate limit and returns how many
    seconds the caller must wait before making it.
    """

    @property
    def concurrency_limits(self) -> Mapping[str, int]:
        """The concurrency limits: slots by name."""

    @property
    def rate_limits(self) -> Mapping[str, str]:
        """The rate limits, as declared (``"10/s"``), by name."""

    def acquire(self, slots: Mapping[str, int], granted: Callable[[], None]) -> object | None:
        """Take `slots` now (None) or queue for them (a ticket; `granted` is called later)."""

    def cancel(self, ticket: object) -> bool:
        """Withdraw a queued request; False if it was granted meanwhile."""

    def release(self, slots: Mapping[str, int]) -> None:
        """Give back slots taken by `acquire`."""

    def reserve(self, name: str, occupy: int = 1) -> float:
        """Book `occupy` calls of rate limit `name`: seconds to wait before making them."""


# The limits whose slot the code running here holds (its run's, or a block's): the runs
# it submits, and `concurrency` blocks inside it, share that slot.
_held: contextvars.ContextVar[frozenset[str]] = contextvars.ContextVar(
    "baton_limits_held", default=frozenset()
)
_status_lock = threading.Lock()

_NEW, _WAITING, _HOLDING, _ENDED = 0, 1, 2, 3


@final
class Admission:
    """A task run's standing with its flow's concurrency limits: the slots it needs, the
    limits it holds for itself and its nested runs, and whether it holds them now."""

    __slots__ = ("held", "limiter", "needed", "status", "ticket")

    def __init__(self, limiter: Limiter, needed: dict[str, int], held: frozenset[str]) -> None:
        self.limiter = limiter
        self.needed = needed
        self.held = held
        self.status = _NEW if needed else _HOLDING
        self.ticket: object | None = None

    def wait_message(self) -> str:
        names = ", ".join(repr(name) for name in self.needed)
        return f"Waiting for a slot of concurrency limit {names}."

    def granted(self) -> bool:
        """The queued request was granted: True if the run goes on, False if it ended
        meanwhile (its slots are then given back)."""
        with _status_lock:
            if self.status == _WAITING:
                self.status = _HOLDING
                return True
        self.limiter.release(self.needed)
        return False

    def end(self) -> None:
        """The run is final: give back what it holds, or withdraw its request."""
        with _status_lock:
            status, self.status = self.status, _ENDED
        if status == _HOLDING:
            if self.needed:
                self.limiter.release(self.needed)
        elif status == _WAITING and self.ticket is not None:
            # Not withdrawn: it was granted meanwhile, and `granted` gives the slots back.
            self.limiter.cancel(self.ticket)


def admission_for(limiter: Limiter, tags: frozenset[str]) -> Admission | None:
    """The admission of a run with `tags` submitted here, or None if no limit concerns it."""
    held = _held.get()
    limits = limiter.concurrency_limits
    if not tags:
        return Admission(limiter, {}, held) if held else None
    mine = {tag for tag in tags if tag in limits}
    if not mine and not held:
        return None
    return Admission(limiter, {name: 1 for name in sorted(mine - held)}, held | mine)


def acquire_blocking(admission: Admission) -> None:
    """Take the admission's slots in this thread, waiting as long as it takes (a worker
    of a bounded pool lends its slot meanwhile)."""
    event = threading.Event()
    ticket = admission.limiter.acquire(admission.needed, event.set)
    if ticket is None:
        admission.status = _HOLDING
        return
    from baton._futures import _wait_until

    _wait_until(event.is_set, None, event.wait)
    admission.status = _HOLDING


def acquire_later(
    admission: Admission, granted: Callable[[], None], queued: Callable[[], None]
) -> bool:
    """Take the admission's slots now (True) or queue (False): then `queued()` runs at
    once, and `granted()` once they are held, unless the run ended first."""

    def on_grant() -> None:
        if admission.granted():
            granted()

    admission.status = _WAITING
    ticket = admission.limiter.acquire(admission.needed, on_grant)
    if ticket is None:
        admission.status = _HOLDING
        return True
    with _status_lock:
        # Under the lock that a grant needs to go on: `queued` comes before `granted`.
        admission.ticket = ticket
        if admission.status == _WAITING:
            queued()
    return False


def holding(held: frozenset[str]) -> contextvars.Token[frozenset[str]]:
    return _held.set(held)


def let_go(token: contextvars.Token[frozenset[str]]) -> None:
    _held.reset(token)


# -- in task code ---------------------------------------------------------------------


def held_limits() -> frozenset[str]:
    """The limits whose slot the code running here holds."""
    return _held.get()
