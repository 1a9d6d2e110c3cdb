"""Concurrency limits and rate limits, kept by the flow's process with no server.

A flow run that declares limits (``@flow(concurrency_limits=..., rate_limits=...)``
or the ``BATON_CONCURRENCY_LIMITS`` / ``BATON_RATE_LIMITS`` settings) gets one
`LocalLimiter`. Its scope admits tagged runs before the runner sees them, so every
runner honours the limits; code on workers (`concurrency`, `rate_limit`, runs that
tasks submit there) reaches the same limiter through the `RunLimits` that travels
in each `RunCall` (see `baton._limits_service`).

A run that holds a slot shares it with the runs it submits (and theirs): they are
admitted under the slot of the limits it holds, so a limit never deadlocks a parent
that waits for its own subtasks.
"""

from __future__ import annotations

import collections
import contextvars
import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, final

from baton._errors import BatonError

if TYPE_CHECKING:
    import types

    from baton._limits_service import LimiterHandle
    from baton._scope import RunScope

__all__ = [
    "Admission",
    "LimitError",
    "Limiter",
    "LocalLimiter",
    "RunLimits",
    "concurrency",
    "current_limiter",
    "parse_rate",
    "rate_limit",
    "rate_limit_async",
]

AWAITING_SLOT = "AwaitingConcurrencySlot"
"""The name of the PENDING state of a run that waits for a concurrency slot."""


class LimitError(BatonError, ValueError):
    """A concurrency or rate limit used in a way that cannot work: a name no limit of
    the flow run has, a malformed rate, or more slots than the limit has."""


# -- declarations ---------------------------------------------------------------------

_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d*\.?\d*)\s*([a-z]+)\s*$", re.IGNORECASE)
_UNITS = {
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "seconds": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "minutes": 60.0,
    "h": 3600.0,
    "hour": 3600.0,
    "hours": 3600.0,
    "d": 86400.0,
    "day": 86400.0,
    "days": 86400.0,
}


def parse_rate(text: object) -> tuple[int, float]:
    """``"10/s"`` -> (10, 1.0): at most 10 calls in any 1 second. Units: s, m, h, d
    (or second, minute, hour, day); a period may have a count, as in ``"5/10s"``."""
    match = _RATE.match(text) if isinstance(text, str) else None
    unit = _UNITS.get(match.group(3).lower()) if match else None
    if match is None or unit is None:
        raise ValueError(
            f"a rate is written as calls per period, such as '10/s', '600/m', '1/h' or "
            f"'5/10s' (units: s, m, h, d); got {text!r}"
        )
    count = int(match.group(1))
    scale = float(match.group(2)) if match.group(2) not in ("", ".") else 1.0
    period = scale * unit
    if count < 1 or not period > 0 or not math.isfinite(period):
        raise ValueError(f"a rate needs at least 1 call per period longer than 0, got {text!r}")
    return count, period


def check_concurrency_limits(value: Any) -> dict[str, int]:
    """Validate ``{"db": 2}``: names are non-empty strings, limits whole numbers >= 1."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"expected a mapping of limit names to slots, such as {{'db': 2}}")
    checked: dict[str, int] = {}
    for name, limit in value.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"limit names are non-empty strings (tags), got {name!r}")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(
                f"the limit of {name!r} must be a whole number of slots >= 1, got {limit!r}; "
                "leave the name out for no limit"
            )
        checked[name] = limit
    return checked


def check_rate_limits(value: Any) -> dict[str, str]:
    """Validate ``{"api": "10/s"}`` (see `parse_rate`)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"expected a mapping of limit names to rates, such as {{'api': '10/s'}}")
    checked: dict[str, str] = {}
    for name, rate in value.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"limit names are non-empty strings, got {name!r}")
        try:
            parse_rate(rate)
        except ValueError as exc:
            raise ValueError(f"rate limit {name!r}: {exc}") from None
        checked[name] = rate
    return checked


# -- the limiter ----------------------------------------------------------------------


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

    concurrency_limits: Mapping[str, int]
    rate_limits: Mapping[str, str]

    def acquire(self, slots: Mapping[str, int], granted: Callable[[], None]) -> object | None:
        """Take `slots` now (None) or queue for them (a ticket; `granted` is called later)."""

    def cancel(self, ticket: object) -> bool:
        """Withdraw a queued request; False if it was granted meanwhile."""

    def release(self, slots: Mapping[str, int]) -> None:
        """Give back slots taken by `acquire`."""

    def reserve(self, name: str, occupy: int = 1) -> float:
        """Book `occupy` calls of rate limit `name`: seconds to wait before making them."""


@final
class _Waiter:
    __slots__ = ("cancelled", "granted", "slots")

    def __init__(self, slots: Mapping[str, int], granted: Callable[[], None]) -> None:
        self.slots = slots
        self.granted = granted
        self.cancelled = False


@final
class LocalLimiter:
    """The limits of one flow run, in its process: slots taken in order of asking, and
    for each rate limit the times of its last calls (a sliding window: at most N calls
    in any period)."""

    def __init__(
        self,
        concurrency_limits: Mapping[str, int],
        rate_limits: Mapping[str, str],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.concurrency_limits = dict(concurrency_limits)
        self.rate_limits = dict(rate_limits)
        self.names = frozenset(self.concurrency_limits)
        self._clock = clock
        self._lock = threading.Lock()
        self._used = dict.fromkeys(self.concurrency_limits, 0)
        self._waiting: collections.deque[_Waiter] = collections.deque()
        # How many queued requests need each limit: a request for a limit others queue
        # for goes behind them.
        self._queued = dict.fromkeys(self.concurrency_limits, 0)
        self._rates = {name: parse_rate(rate) for name, rate in self.rate_limits.items()}
        self._calls: dict[str, collections.deque[float]] = {
            name: collections.deque(maxlen=count) for name, (count, _) in self._rates.items()
        }
        self._handle: LimiterHandle | None = None
        self._run_limits: dict[frozenset[str], RunLimits] = {}

    def in_use(self, name: str) -> int:
        """How many slots of concurrency limit `name` are held now."""
        with self._lock:
            return self._used[name]

    def acquire(self, slots: Mapping[str, int], granted: Callable[[], None]) -> object | None:
        used, queued, limits = self._used, self._queued, self.concurrency_limits
        with self._lock:
            if all(
                not queued[name] and used[name] + count <= limits[name]
                for name, count in slots.items()
            ):
                for name, count in slots.items():
                    used[name] += count
                return None
            waiter = _Waiter(slots, granted)
            self._waiting.append(waiter)
            for name in slots:
                queued[name] += 1
        return waiter

    def cancel(self, ticket: object) -> bool:
        with self._lock:
            if not isinstance(ticket, _Waiter) or ticket.cancelled or ticket not in self._waiting:
                return False
            ticket.cancelled = True
            self._waiting.remove(ticket)
            for name in ticket.slots:
                self._queued[name] -= 1
        self._grant()  # requests behind it may fit now
        return True

    def release(self, slots: Mapping[str, int]) -> None:
        used = self._used
        with self._lock:
            for name, count in slots.items():
                used[name] -= count
            if not self._waiting:
                return
        self._grant()

    def _grant(self) -> None:
        """Grant, in order, the queued requests that fit; a request that does not fit
        holds back those behind it that need any of the same limits."""
        granted: list[_Waiter] = []
        with self._lock:
            used, limits = self._used, self.concurrency_limits
            blocked: set[str] = set()
            kept: collections.deque[_Waiter] = collections.deque()
            waiting = self._waiting
            while waiting:
                waiter = waiting.popleft()
                names = waiter.slots.keys()
                if blocked.isdisjoint(names) and all(
                    used[name] + count <= limits[name] for name, count in waiter.slots.items()
                ):
                    for name, count in waiter.slots.items():
                        used[name] += count
                        self._queued[name] -= 1
                    granted.append(waiter)
                    continue
                kept.append(waiter)
                blocked.update(names)
                if len(blocked) == len(limits):
                    break  # nothing behind can be granted
            kept.extend(waiting)
            self._waiting = kept
        for waiter in granted:
            waiter.granted()

    def reserve(self, name: str, occupy: int = 1) -> float:
        count, period = self._rates[name]
        with self._lock:
            calls = self._calls[name]
            now = self._clock()
            at = now
            for _ in range(occupy):
                at = max(now, calls[-1] if calls else now)
                if len(calls) == count:
                    at = max(at, calls[0] + period)
                calls.append(at)
        return max(0.0, at - now)

    def handle(self) -> LimiterHandle:
        """The picklable address of this limiter, for workers (starts its service)."""
        handle = self._handle
        if handle is None:
            with self._lock:
                handle = self._handle
                if handle is None:
                    from baton._limits_service import serve

                    handle = self._handle = serve(self)
        return handle

    def run_limits(self, held: frozenset[str]) -> RunLimits:
        """What travels with the call of a run that holds `held` (cached)."""
        limits = self._run_limits.get(held)
        if limits is None:
            limits = self._run_limits[held] = RunLimits(self.handle(), held)
        return limits

    def close(self) -> None:
        """Stop the service that workers reach this limiter by, if it was started."""
        handle, self._handle = self._handle, None
        if handle is not None:
            from baton._limits_service import stop

            stop(handle)


@final
class RunLimits:
    """The limits part of a `RunCall`: how a worker reaches the flow's limiter, and the
    limits whose slot the run holds (which the runs it submits share)."""

    __slots__ = ("handle", "held")

    def __init__(self, handle: LimiterHandle, held: frozenset[str]) -> None:
        self.handle = handle
        self.held = held

    def __reduce__(self) -> tuple[Any, ...]:
        return (RunLimits, (self.handle, self.held))

    def limiter(self) -> Limiter:
        """The flow's limiter: itself in the flow's process, a client of it elsewhere."""
        return self.handle.limiter()


# -- admission of task runs -----------------------------------------------------------

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


def current_limiter() -> Limiter | None:
    """The limiter of the flow run the calling code belongs to, if it declares limits."""
    from baton._scope import _current_scope, _running_flow_scope

    scope: RunScope | None = _current_scope.get()
    if scope is None:
        scope = _running_flow_scope()
    return scope.limiter if scope is not None else None


def _limiter_for(what: str, names: tuple[str, ...]) -> Limiter:
    limiter = current_limiter()
    if limiter is None:
        raise LimitError(
            f"{what} was called where no flow run declares limits. Declare them on the "
            f"flow, as in @flow(concurrency_limits={{{names[0]!r}: 2}}) or "
            f"@flow(rate_limits={{{names[0]!r}: '10/s'}}), or with the "
            "BATON_CONCURRENCY_LIMITS / BATON_RATE_LIMITS settings, and call it inside "
            "the flow's tasks."
        )
    return limiter


def _names_of(names: str | Iterable[str], what: str) -> tuple[str, ...]:
    found = (names,) if isinstance(names, str) else tuple(names)
    if not found or not all(isinstance(name, str) and name for name in found):
        raise LimitError(f"{what} takes a limit name or a list of them, got {names!r}")
    return found


def _check_occupy(occupy: object, what: str) -> int:
    if isinstance(occupy, bool) or not isinstance(occupy, int) or occupy < 1:
        raise LimitError(f"{what}: occupy must be a whole number >= 1, got {occupy!r}")
    return occupy


@final
class concurrency:  # noqa: N801 - used as a function, like contextlib's context managers
    """Hold `occupy` slots of the named concurrency limit(s) for the block, in any task
    of a flow that declares them, wherever the task runs::

        with baton.concurrency("db"):
            write(rows)

        async with baton.concurrency("gpu", occupy=2):
            await infer(batch)

    The block waits until the slots are free (`timeout` seconds at most, then
    `TimeoutError`). Inside a run (or block) that already holds a slot of a limit,
    through its tag or an enclosing block, one fewer slot of it is taken: a task
    tagged ``db`` under a limit of 1 can still enter ``concurrency("db")``. Runs
    submitted inside the block share its slots.

    An undeclared name, `occupy` < 1, or more slots than the limit has raises
    `LimitError`.
    """

    __slots__ = ("_held_token", "_limiter", "_slots", "_timeout", "names", "occupy")

    def __init__(
        self, names: str | Iterable[str], occupy: int = 1, timeout: float | None = None
    ) -> None:
        what = f"baton.concurrency({names!r})"
        self.names = _names_of(names, what)
        self.occupy = _check_occupy(occupy, what)
        self._timeout = timeout
        self._limiter: Limiter | None = None
        self._slots: dict[str, int] = {}
        self._held_token: contextvars.Token[frozenset[str]] | None = None

    def _prepare(self) -> tuple[Limiter, dict[str, int]]:
        limiter = _limiter_for(f"baton.concurrency({self.names[0]!r})", self.names)
        limits = limiter.concurrency_limits
        held = _held.get()
        slots: dict[str, int] = {}
        for name in self.names:
            limit = limits.get(name)
            if limit is None:
                raise LimitError(_unknown(name, limiter, "concurrency"))
            if self.occupy > limit:
                raise LimitError(
                    f"baton.concurrency({name!r}, occupy={self.occupy}) asks for more slots "
                    f"than the limit has ({limit}): occupy at most {limit}, or raise the limit."
                )
            count = self.occupy - 1 if name in held else self.occupy
            if count:
                slots[name] = count
        return limiter, slots

    def _took(self, limiter: Limiter, slots: dict[str, int]) -> None:
        self._limiter, self._slots = limiter, slots
        self._held_token = _held.set(_held.get() | frozenset(self.names))

    def __enter__(self) -> concurrency:
        limiter, slots = self._prepare()
        if slots:
            event = threading.Event()
            ticket = limiter.acquire(slots, event.set)
            if ticket is not None:
                from baton._futures import _wait_until

                timeout = self._timeout
                _wait_until(event.is_set, timeout, event.wait)
                if not event.is_set():
                    self._give_up(limiter, ticket, slots)
        self._took(limiter, slots)
        return self

    async def __aenter__(self) -> concurrency:
        import asyncio

        limiter, slots = self._prepare()
        if slots:
            loop = asyncio.get_running_loop()
            ready: asyncio.Future[None] = loop.create_future()

            def granted() -> None:
                loop.call_soon_threadsafe(_settle, ready)

            ticket = limiter.acquire(slots, granted)
            if ticket is not None:
                try:
                    await asyncio.wait_for(asyncio.shield(ready), self._timeout)
                except (asyncio.TimeoutError, asyncio.CancelledError):
                    self._give_up(limiter, ticket, slots)
        self._took(limiter, slots)
        return self

    def _give_up(self, limiter: Limiter, ticket: object, slots: dict[str, int]) -> None:
        if limiter.cancel(ticket):
            raise TimeoutError(
                f"baton.concurrency({', '.join(map(repr, self.names))}) got no slot within "
                f"{self._timeout:g} s."
            )
        # Granted as the wait ended: go on with the slots.

    def _exit(self) -> None:
        limiter, slots, token = self._limiter, self._slots, self._held_token
        self._limiter, self._slots, self._held_token = None, {}, None
        if token is not None:
            _held.reset(token)
        if limiter is not None and slots:
            limiter.release(slots)

    def __exit__(self, *exc: object) -> None:
        self._exit()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: types.TracebackType | None,
    ) -> None:
        self._exit()


def _settle(ready: Any) -> None:
    if not ready.done():
        ready.set_result(None)


def _unknown(name: str, limiter: Limiter, kind: str) -> str:
    declared = limiter.concurrency_limits if kind == "concurrency" else limiter.rate_limits
    other = limiter.rate_limits if kind == "concurrency" else limiter.concurrency_limits
    known = ", ".join(map(repr, sorted(declared))) or "none"
    if name in other:
        hint = (
            f" {name!r} is a rate limit: use baton.rate_limit({name!r})."
            if kind == "concurrency"
            else f" {name!r} is a concurrency limit: use baton.concurrency({name!r})."
        )
    else:
        option = "concurrency_limits" if kind == "concurrency" else "rate_limits"
        example = "2" if kind == "concurrency" else "'10/s'"
        hint = f" Declare it: @flow({option}={{{name!r}: {example}}})."
    return f"No {kind} limit named {name!r} in this flow run (declared: {known}).{hint}"


def _reserve(names: str | Iterable[str], occupy: int, what: str) -> float:
    found = _names_of(names, what)
    occupy = _check_occupy(occupy, what)
    limiter = _limiter_for(what, found)
    delay = 0.0
    for name in found:
        rate = limiter.rate_limits.get(name)
        if rate is None:
            raise LimitError(_unknown(name, limiter, "rate"))
        count, _ = parse_rate(rate)
        if occupy > count:
            raise LimitError(
                f"{what} with occupy={occupy} books more calls than rate {rate!r} allows in "
                f"one period: occupy at most {count}."
            )
        delay = max(delay, limiter.reserve(name, occupy))
    return delay


def rate_limit(names: str | Iterable[str], occupy: int = 1) -> None:
    """Block until one more call (`occupy` calls) of the named rate limit(s) is within
    the rate the flow declares (``@flow(rate_limits={"api": "10/s"})``), counted across
    every worker of the flow run::

        baton.rate_limit("api")
        response = client.get(url)

    An undeclared name raises `LimitError`. In async code, ``await
    baton.rate_limit_async("api")`` waits without blocking the event loop.
    """
    delay = _reserve(names, occupy, f"baton.rate_limit({names!r})")
    if delay > 0:
        from baton._futures import blocking_section

        with blocking_section():
            time.sleep(delay)


async def rate_limit_async(names: str | Iterable[str], occupy: int = 1) -> None:
    """`rate_limit` for async code: awaits its turn without blocking the event loop."""
    import asyncio

    delay = _reserve(names, occupy, f"baton.rate_limit_async({names!r})")
    if delay > 0:
        await asyncio.sleep(delay)


def limits_of_flow(
    concurrency_limits: Mapping[str, int], rate_limits: Mapping[str, str]
) -> LocalLimiter | None:
    """The limiter of a flow run (the settings' limits, then the flow's own on top)."""
    from baton._settings import get_settings

    settings = get_settings()
    merged = {**settings.concurrency_limits, **concurrency_limits}
    rates = {**settings.rate_limits, **rate_limits}
    if not merged and not rates:
        return None
    return LocalLimiter(merged, rates)

