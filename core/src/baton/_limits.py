"""Concurrency limits and rate limits, kept by the flow's process with no server.

A flow run that declares limits (``@flow(concurrency_limits=..., rate_limits=...)``
or the ``BATON_CONCURRENCY_LIMITS`` / ``BATON_RATE_LIMITS`` settings) gets one
`LocalLimiter`. Its scope admits tagged runs before the runner sees them (see
`baton._admission`), so every runner honours the limits; code on workers
(`concurrency`, `rate_limit`, runs that tasks submit there) reaches the same
limiter through the `RunLimits` that travels in each `RunCall` (see
`baton._limits_service`).
"""

from __future__ import annotations

import collections
import contextvars
import functools
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, final

from baton._admission import Limiter, Plans, _held, current_held
from baton._limitspec import LimitError, parse_rate

if TYPE_CHECKING:
    import types

    from baton._limits_service import LimiterHandle, RunLimits
    from baton._scope import RunScope

__all__ = [
    "LimitError",
    "LocalLimiter",
    "concurrency",
    "current_limiter",
    "limits_of_flow",
    "rate_limit",
    "rate_limit_async",
]


_NONE: list[None] = [None]


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
        # One list per limit, one item per slot taken: appending to a list, or deleting
        # its last items, is one atomic step under the GIL, so a run takes and gives
        # back a free slot without a lock (see `try_acquire`).
        self._taken: dict[str, list[None]] = {name: [] for name in self.concurrency_limits}
        self._waiting: collections.deque[_Waiter] = collections.deque()
        # How many queued requests need each limit: a request for a limit others queue
        # for goes behind them.
        self._queued = dict.fromkeys(self.concurrency_limits, 0)
        self._rates = {name: parse_rate(rate) for name, rate in self.rate_limits.items()}
        self._calls: dict[str, collections.deque[float]] = {
            name: collections.deque(maxlen=count) for name, (count, _) in self._rates.items()
        }
        self._handle: LimiterHandle | None = None
        self.plans: Plans = {}
        self._run_limits: dict[frozenset[str], RunLimits] = {}

    def in_use(self, name: str) -> int:
        """How many slots of concurrency limit `name` are held now."""
        return len(self._taken[name])

    def try_acquire(self, slots: Mapping[str, int]) -> bool:
        # Take each slot, then look: one that went past its limit is given back (two
        # takers racing for the last slot may then both fail, and queue instead).
        taken, queued, limits = self._taken, self._queued, self.concurrency_limits
        done = 0
        for name, count in slots.items():
            if queued[name]:
                break
            cell = taken[name]
            if count == 1:
                cell.append(None)
            else:
                cell.extend(_NONE * count)
            if len(cell) > limits[name]:
                del cell[-count:]
                break
            done += 1
        else:
            return True
        for name, count in list(slots.items())[:done]:
            del taken[name][-count:]
        if self._waiting:
            self._grant()  # what this gave back may be what a queued request waits for
        return False

    def quick(self, slots: Mapping[str, int]) -> tuple[Callable[[], bool], Callable[[], None]]:
        """`try_acquire(slots)` and `release(slots)` as two functions, quicker ones for
        one slot of one limit (what a run with one limited tag takes)."""
        if len(slots) != 1 or next(iter(slots.values())) != 1:
            return functools.partial(self.try_acquire, slots), functools.partial(
                self.release, slots
            )
        [name] = slots
        cell, limit, queued, waiting = (
            self._taken[name],
            self.concurrency_limits[name],
            (self._queued),
            self._waiting,
        )
        grant = self._grant

        def take() -> bool:
            if queued[name]:
                return False
            cell.append(None)
            if len(cell) > limit:
                del cell[-1]
                if waiting:
                    grant()
                return False
            return True

        def give() -> None:
            del cell[-1]
            if waiting:
                grant()

        return take, give

    def acquire(self, slots: Mapping[str, int], granted: Callable[[], None]) -> object | None:
        if self.try_acquire(slots):
            return None
        with self._lock:
            waiter = _Waiter(slots, granted)
            self._waiting.append(waiter)
            for name in slots:
                self._queued[name] += 1
            # Slots freed since `try_acquire` looked, before this request was queued,
            # granted nobody: if it is first in line for them, it takes them now.
            if self._first_in_line(waiter) and self._take(slots):
                self._waiting.remove(waiter)
                for name in slots:
                    self._queued[name] -= 1
                return None
        return waiter

    def _first_in_line(self, waiter: _Waiter) -> bool:
        names = waiter.slots.keys()
        for other in self._waiting:
            if other is waiter:
                return True
            if not names.isdisjoint(other.slots.keys()):
                return False
        return True

    def _take(self, slots: Mapping[str, int]) -> bool:
        """Under the lock: take `slots` if they all fit (racing lock-free takers give
        back what went past a limit, so a full limit may look fuller for an instant)."""
        taken, limits = self._taken, self.concurrency_limits
        for name, count in slots.items():
            if len(taken[name]) + count > limits[name]:
                return False
        for name, count in slots.items():
            taken[name].extend(_NONE * count)
        return True

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
        taken = self._taken
        for name, count in slots.items():
            del taken[name][-count:]
        if self._waiting:
            self._grant()

    def _grant(self) -> None:
        """Grant, in order, the queued requests that fit; a request that does not fit
        holds back those behind it that need any of the same limits."""
        granted: list[_Waiter] = []
        with self._lock:
            # In place: lock-free readers of `_waiting` must never see it empty while
            # requests are still queued.
            limits, queued, waiting = self.concurrency_limits, self._queued, self._waiting
            blocked: set[str] = set()
            index = 0
            while index < len(waiting):
                waiter = waiting[index]
                names = waiter.slots.keys()
                if blocked.isdisjoint(names) and self._take(waiter.slots):
                    del waiting[index]
                    for name in names:
                        queued[name] -= 1
                    granted.append(waiter)
                    continue
                blocked.update(names)
                if len(blocked) == len(limits):
                    break  # nothing behind can be granted
                index += 1
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
            from baton._limits_service import RunLimits

            limits = self._run_limits[held] = RunLimits(self.handle(), held)
        return limits

    def close(self) -> None:
        """Stop the service that workers reach this limiter by, if it was started."""
        handle, self._handle = self._handle, None
        if handle is not None:
            from baton._limits_service import stop

            stop(handle)


def current_limiter() -> Limiter | None:
    """The limiter of the flow run the calling code belongs to, if it declares limits."""
    from baton._context import current_scope_var as _current_scope
    from baton._scope import _running_flow_scope

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
class concurrency:
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
        held = current_held()
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
        self._held_token = _held.set(current_held() | frozenset(self.names))

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
                except asyncio.TimeoutError:
                    self._give_up(limiter, ticket, slots)
                except asyncio.CancelledError:
                    # Cancelled while waiting: withdraw, or give back what came meanwhile.
                    if not limiter.cancel(ticket):
                        release = limiter.release
                        ready.add_done_callback(lambda _: release(slots))
                    raise
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
