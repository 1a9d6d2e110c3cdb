"""Admission of task runs under a flow run's concurrency limits.

The scope of a flow run with limits gives each run that carries a limited tag an
`Admission` and takes its slots before the runner sees it; a run that holds slots
shares them with the runs it submits (they are admitted under its slot), so a
limit never deadlocks a parent that waits for its own subtasks.
"""

from __future__ import annotations

import contextvars
import functools
import threading
from collections.abc import Callable, Mapping
from typing import Any, Protocol, final

__all__ = [
    "AWAITING_SLOT",
    "Admission",
    "Limiter",
    "Plan",
    "acquire_blocking",
    "acquire_later",
    "admission_for",
    "held_limits",
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

    def try_acquire(self, slots: Mapping[str, int]) -> bool:
        """Take `slots` if they are free and nobody queues for them; else take nothing."""

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
_NOTHING: frozenset[str] = frozenset()


def _no_run_held() -> frozenset[str]:
    return _NOTHING


# The limits held by the task run executing here, when it runs in the flow's process
# (set by `baton._taskrun`, which knows that run): such a run does not set `_held`.
run_held: Callable[[], frozenset[str]] = _no_run_held


def current_held() -> frozenset[str]:
    """The limits whose slot the code running here holds: an enclosing block's, or the
    running task run's."""
    return _held.get() or run_held()


_status_lock = threading.Lock()

# NEW: not asked yet; WAITING: queued for its slots; HOLDING: granted after waiting (a
# grant and the run's end may race: they settle under `_status_lock`); DIRECT: holds
# its slots (or needs none) since admission, which only the run's end changes.
_NEW, _WAITING, _HOLDING, _ENDED, _DIRECT = 0, 1, 2, 3, 4

Plans = dict[Any, "Plan"]
"""A limiter's cache of plans by tags, or (tags, limits held) where limits are held:
runs of one task ask alike."""


@final
class Plan:
    """How runs with some tags, submitted where some limits are held, stand with a
    limiter: the slots they need, the limits they hold (theirs and those they share),
    and `status`: NEW (they have slots to take) or DIRECT (they hold what they need).
    Shared by all such runs, never changed: a run's `TaskRun.limits` moves from a NEW
    plan to its `holding` plan as it takes its slots, or to an `Admission` of its own
    while it queues for them."""

    __slots__ = ("give", "held", "holding", "limiter", "needed", "status", "take")

    def __init__(
        self,
        limiter: Limiter,
        needed: dict[str, int],
        held: frozenset[str],
        status: int,
        holding: Plan | None = None,
    ) -> None:
        self.limiter = limiter
        self.needed = needed
        self.held = held
        self.status = status
        # `take()` is `limiter.try_acquire(needed)`, `give()` is `limiter.release(needed)`:
        # made once per plan, and quicker when the limiter has `quick(needed)`.
        self.take: Callable[[], bool]
        self.give: Callable[[], None]
        quick = getattr(limiter, "quick", None)
        if quick is not None:
            self.take, self.give = quick(needed)
        else:
            self.take = functools.partial(limiter.try_acquire, needed)
            self.give = functools.partial(limiter.release, needed)
        self.holding: Plan = holding or (
            self if status == _DIRECT else Plan(limiter, needed, held, _DIRECT, None)
        )

    def end(self) -> None:
        """A run of this plan is final: give back its slots if it holds them."""
        if self.status == _DIRECT and self.needed:
            self.give()


@final
class Admission:
    """A run that queued for its slots: whether it holds them now (a grant and the run's
    end may race; they settle under `_status_lock`)."""

    __slots__ = ("held", "limiter", "needed", "run", "status", "ticket")

    def __init__(self, plan: Plan, run: Any) -> None:
        self.limiter = plan.limiter
        self.needed = plan.needed
        self.held = plan.held
        self.status = _WAITING
        self.ticket: object | None = None
        self.run: Any = run  # while it waits: the TaskRun to dispatch once granted

    def _granted(self) -> None:
        """The queued request was granted: the run goes to its runner, unless it ended
        meanwhile (its slots then go back)."""
        with _status_lock:
            go = self.status == _WAITING
            if go:
                self.status = _HOLDING
        if go:
            run = self.run
            run.scope.dispatch_admitted(run)
        else:
            self.limiter.release(self.needed)

    def end(self) -> None:
        """The run is final: give back what it holds, or withdraw its request."""
        with _status_lock:
            status, self.status = self.status, _ENDED
        self.run = None
        if status == _HOLDING:
            self.limiter.release(self.needed)
        elif status == _WAITING and self.ticket is not None:
            # Not withdrawn: it was granted meanwhile, and `_granted` gives the slots back.
            self.limiter.cancel(self.ticket)


def admission_for(limiter: Limiter, tags: frozenset[str]) -> Plan | None:
    """The plan of a run with `tags` submitted here, or None if no limit concerns it."""
    held = current_held()
    plans: Plans | None = getattr(limiter, "plans", None)
    key = (tags, held) if held else tags
    plan = plans.get(key) if plans is not None else None
    if plan is None:
        limits = limiter.concurrency_limits
        mine = frozenset(tag for tag in tags if tag in limits)
        needed = {name: 1 for name in sorted(mine - held)}
        plan = Plan(limiter, needed, held | mine, _NEW if needed else _DIRECT)
        if plans is not None:
            if len(plans) > 1024:
                plans.clear()
            plans[key] = plan
    return plan if plan.held else None


def acquire_blocking(plan: Plan) -> Plan:
    """Take the plan's slots in this thread, waiting as long as it takes (a worker of a
    bounded pool lends its slot meanwhile); the plan of a run that holds them."""
    event = threading.Event()
    ticket = plan.limiter.acquire(plan.needed, event.set)
    if ticket is not None:
        from baton._futures import _wait_until

        _wait_until(event.is_set, None, event.wait)
    return plan.holding


def acquire_later(plan: Plan, run: Any, queued: Callable[[], None]) -> bool:
    """Take the plan's slots for `run` now (True) or queue (False): then `queued()` runs
    at once, and ``run.scope.dispatch_admitted(run)`` once they are held, unless the run
    ended first. `run.limits` says where the run stands."""
    if plan.take():
        run.limits = plan.holding
        return True
    admission = run.limits = Admission(plan, run)
    ticket = plan.limiter.acquire(plan.needed, admission._granted)
    if ticket is None:
        run.limits = plan.holding  # no grant is coming: it holds its slots already
        return True
    with _status_lock:
        # Under the lock that a grant needs to go on: `queued` comes before the dispatch.
        admission.ticket = ticket
        if admission.status == _WAITING:
            queued()
    return False


# -- in task code ---------------------------------------------------------------------


def held_limits() -> frozenset[str]:
    """The limits whose slot the code running here holds."""
    return current_held()
