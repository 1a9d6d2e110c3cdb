"""Priorities and resources: checking them, ordering runs by priority, and holding runs
until the resources they ask for are free on a runner that declares capacities.

`RunQueue` is a FIFO queue per priority (higher first); `ResourcePool` is what the
`thread`, `process` and `sync` runners use to enforce ``@task(resources=...)``
against the capacities declared on them (``get_runner("thread", resources=...)``).
"""

from __future__ import annotations

import bisect
import itertools
import math
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Generic, TypeVar, final

from baton._errors import InvalidOptionsError, RunnerClosedError
from baton._states import State

if TYPE_CHECKING:
    from baton._futures import Future
    from baton._taskrun import TaskRun

__all__ = [
    "AWAITING_RESOURCES",
    "ResourcePool",
    "RunQueue",
    "check_capacities",
    "check_priority",
    "check_resources",
]

T = TypeVar("T")

AWAITING_RESOURCES = "AwaitingResources"
"""The name of the PENDING state of a run that waits for the resources it asks for."""

_PRIORITY_RULE = "must be a whole number >= 0 (higher runs first; the default is 0)"


def check_priority(value: Any) -> int:
    """`value` as a priority, or ValueError saying what a priority is."""
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer() and value >= 0:
            return int(value)
        raise ValueError(_PRIORITY_RULE)
    if value < 0:
        raise ValueError(
            f"{_PRIORITY_RULE}. To run something after the rest, give the rest a higher one"
        )
    return value


def check_resources(value: Any, what: str = "an amount > 0") -> dict[str, float]:
    """`value` as resource amounts by name, or ValueError naming every problem."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError("must map resource names to amounts, such as {'GPU': 1, 'memory': 4e9}")
    checked: dict[str, float] = {}
    problems: list[str] = []
    for name, amount in value.items():
        if not isinstance(name, str) or not name:
            problems.append(f"resource names must be non-empty strings (got {name!r})")
        elif (
            isinstance(amount, bool)
            or not isinstance(amount, (int, float))
            or not math.isfinite(amount)
            or amount <= 0
        ):
            problems.append(f"{name!r} needs {what}, not {amount!r}")
        else:
            checked[name] = float(amount)
    if problems:
        raise ValueError("; ".join(problems))
    return checked


def check_capacities(runner: str, value: Any) -> dict[str, float] | None:
    """The `resources=` capacities of a runner, or InvalidOptionsError."""
    if value is None:
        return None
    try:
        return check_resources(value, "a capacity > 0")
    except ValueError as exc:
        raise InvalidOptionsError(
            f"Invalid options for task runner {runner!r}:\n  resources: {exc}"
        ) from None


@final
class RunQueue(Generic[T]):
    """A queue of items by priority: higher priorities first, first in first out within
    one priority. Not thread-safe (guard it with a lock if threads share it).

    >>> from baton.runners import RunQueue
    >>> queue = RunQueue()
    >>> for item, priority in [("a", 0), ("b", 5), ("c", 0), ("d", 5)]:
    ...     queue.append(item, priority)
    >>> [queue.popleft() for _ in range(len(queue))]
    ['b', 'd', 'a', 'c']
    """

    __slots__ = ("_buckets", "_order", "_size", "_top")

    def __init__(self) -> None:
        self._buckets: dict[int, deque[T]] = {}
        self._order: list[int] = []  # the priorities with a bucket, ascending
        self._size = 0
        # The bucket of the highest priority. A bucket that empties is dropped, unless
        # it is the only one: a queue of one priority never makes a bucket again.
        self._top: deque[T] | None = None

    def _bucket(self, priority: int) -> deque[T]:
        bucket = self._buckets.get(priority)
        if bucket is None:
            bucket = self._buckets[priority] = deque()
            bisect.insort(self._order, priority)
            if self._order[-1] == priority:
                self._top = bucket
        return bucket

    def _settle(self) -> deque[T]:
        """The top bucket, once empty buckets above the items are dropped."""
        top = self._top
        assert top is not None
        while not top and len(self._order) > 1:
            del self._buckets[self._order.pop()]
            top = self._top = self._buckets[self._order[-1]]
        return top

    def append(self, item: T, priority: int = 0) -> None:
        """Queue `item` behind the others of its priority."""
        bucket = self._buckets.get(priority)
        if bucket is None:
            bucket = self._bucket(priority)
        bucket.append(item)
        self._size += 1

    def appendleft(self, item: T, priority: int = 0) -> None:
        """Queue `item` ahead of the others of its priority (a run going again)."""
        self._bucket(priority).appendleft(item)
        self._size += 1

    def peek(self) -> T:
        """The item `popleft` would return. IndexError when empty."""
        if not self._size:
            raise IndexError("peek from an empty RunQueue")
        top = self._top
        if not top:
            top = self._settle()
        return top[0]

    def popleft(self) -> T:
        """Remove and return the first item of the highest priority. IndexError when empty."""
        if not self._size:
            raise IndexError("pop from an empty RunQueue")
        top = self._top
        if not top:
            top = self._settle()
        item = top.popleft()
        self._size -= 1
        if not top and len(self._order) > 1:
            self._settle()
        return item

    def remove(self, item: T, priority: int | None = None) -> bool:
        """Remove `item` (looked for at `priority`, or everywhere); False if absent."""
        for level in reversed(self._order) if priority is None else (priority,):
            bucket = self._buckets.get(level)
            if bucket is None:
                continue
            try:
                bucket.remove(item)
            except ValueError:
                continue
            self._size -= 1
            if not bucket and len(self._order) > 1:
                self._order.remove(level)
                del self._buckets[level]
                self._top = self._buckets[self._order[-1]]
            return True
        return False

    def clear(self) -> None:
        self._buckets.clear()
        self._order.clear()
        self._size = 0
        self._top = None

    def __len__(self) -> int:
        return self._size

    def __bool__(self) -> bool:
        return self._size > 0

    def __iter__(self) -> Iterator[T]:
        """The items in the order `popleft` would return them."""
        for priority in reversed(self._order):
            yield from self._buckets[priority]

    def __repr__(self) -> str:
        return f"<RunQueue of {self._size}>"


_Waiting = tuple[int, int, "TaskRun", Callable[[], None], dict[str, float]]


@final
class ResourcePool:
    """The resource capacities declared on a runner, shared by the runs it holds.

    `offer(run, start)` calls `start()` at once when the run's resources are free (it
    then holds them until it is final), else keeps it PENDING (``AwaitingResources``)
    and starts it once they are. Runs waiting start by priority, first come first
    within one; a run asking for a resource that a higher-priority waiting run also
    asks for never overtakes it, so a large request is never starved by small ones.
    A request no capacity can ever satisfy raises at once.
    """

    def __init__(self, runner: str, capacities: Mapping[str, float]) -> None:
        self.runner = runner
        self.capacities = dict(capacities)
        self._free = dict(capacities)
        self._waiting: list[_Waiting] = []  # sorted: highest priority first, then FIFO
        self._sequence = itertools.count()
        self._lock = threading.Lock()

    def check(self, run: TaskRun) -> dict[str, float]:
        """What `run` asks for, or InvalidOptionsError when it could never start here."""
        need = run.resources
        problems: list[str] = []
        capacities = self.capacities
        for name, amount in need.items():
            capacity = capacities.get(name)
            if capacity is None:
                declared = ", ".join(f"{k}={v:g}" for k, v in sorted(capacities.items())) or "none"
                problems.append(
                    f"{name}={amount:g}: task runner {self.runner!r} declares no resource "
                    f"{name!r} (it declares: {declared}). Declare its capacity, as in "
                    f"get_runner({self.runner!r}, resources={{{name!r}: {amount:g}}}), or "
                    "remove it from the task's resources"
                )
            elif amount > capacity:
                problems.append(
                    f"{name}={amount:g}: more than the {capacity:g} task runner "
                    f"{self.runner!r} has in all, so the run could never start. Ask for at "
                    f"most {capacity:g}, or declare a larger capacity on the runner"
                )
        if problems:
            raise InvalidOptionsError(
                f"Task run {run.name!r} (task {run.task.name!r}) asks for resources it cannot "
                "get:\n  " + "\n  ".join(problems)
            )
        return need

    def offer(self, run: TaskRun, start: Callable[[], None]) -> None:
        """Start `run` (by calling `start`) now or once its resources are free."""
        need = self.check(run)
        with self._lock:
            if self._fits(need) and not self._behind(run.priority, need):
                self._take(need)
                waiting = False
            else:
                waiting = True
                message = (
                    f"Task run {run.name!r} waits for resources "
                    f"{', '.join(f'{k}={v:g}' for k, v in need.items())} of task runner "
                    f"{self.runner!r}."
                )
                # Reported before it can be started, so RUNNING is never overwritten.
                run.set_state(State.pending(AWAITING_RESOURCES, message))
                key = (-run.priority, next(self._sequence))
                bisect.insort(self._waiting, (*key, run, start, need))
        if not waiting:
            self._launch(run, start, need)

    def _behind(self, priority: int, need: dict[str, float]) -> bool:
        """Whether a waiting run of at least `priority` asks for a resource of `need`."""
        for entry in self._waiting:
            if -entry[0] < priority:
                return False  # the rest have lower priorities
            if not need.keys().isdisjoint(entry[4]):
                return True
        return False

    def _fits(self, need: dict[str, float]) -> bool:
        free = self._free
        return all(free[name] >= amount for name, amount in need.items())

    def _take(self, need: dict[str, float]) -> None:
        for name, amount in need.items():
            self._free[name] -= amount

    def _launch(self, run: TaskRun, start: Callable[[], None], need: dict[str, float]) -> None:
        run.future.add_done_callback(lambda _: self._release(need))
        try:
            start()
        except RunnerClosedError as exc:
            run.set_state(State.cancelled(f"Task run {run.name!r} could not start: {exc}"))

    def _release(self, need: dict[str, float]) -> None:
        starting: list[_Waiting] = []
        with self._lock:
            free = self._free
            for name, amount in need.items():
                free[name] += amount
            blocked: set[str] = set()
            kept: list[_Waiting] = []
            for entry in self._waiting:
                run, wants = entry[2], entry[4]
                if run.future.done():
                    continue  # cancelled while it waited
                if blocked.isdisjoint(wants) and self._fits(wants):
                    self._take(wants)
                    starting.append(entry)
                else:
                    kept.append(entry)
                    blocked.update(wants)
            self._waiting = kept
        for _, _, run, start, wants in starting:
            self._launch(run, start, wants)

    def drain(self) -> list[Future[Any]]:
        """Forget the runs still waiting (the runner shuts down); their futures."""
        with self._lock:
            waiting, self._waiting = self._waiting, []
        return [entry[2].future for entry in waiting]

    def __repr__(self) -> str:
        return f"<ResourcePool {self.capacities!r} of {self.runner!r}>"
