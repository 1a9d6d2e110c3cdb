"""Batching of small runs, for runners that send runs to other processes or machines.

Sending a run to an engine costs far more than a no-op run takes: a Dask task costs
the scheduler a millisecond or two, a Ray task half of one. A runner that packs the
runs that are ready together into one engine call pays that once per batch.

Three pieces, each usable on its own:

- `BatchSizer`, the policy: how many runs of a task go in one batch, from how long
  its runs take (tiny runs batch deeply; runs of ``alone_seconds`` or more go one by
  one, so that load stays balanced), never so many that a free slot is left idle.
- `BatchQueue`, in the flow's process: runs waiting to go, packed into batches as
  slots free up; the runner sends what `take()` hands it and reports each batch's
  end with `done()`.
- `run_batch`, on the worker: runs each call of a batch through `run_call`, so that
  each run keeps every rule it has alone (states, retries, timeouts, nested runs,
  hooks), and times each one for the sizer.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Sequence
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, final

if TYPE_CHECKING:
    from baton._remote import RemoteResult, RunCall
    from baton._runner import TaskRunner
    from baton._states import State
    from baton._task import Task

__all__ = [
    "Batch",
    "BatchQueue",
    "BatchSizer",
    "batch_size_of",
    "batch_size_problem",
    "run_batch",
]

T = TypeVar("T")


@final
class BatchSizer:
    """How many ready runs of one kind (a task, on one placement) go in one batch.

    It keeps, per key, a moving average of how long a run takes (`observe`), and
    sizes a batch (`size`) to take about `target_seconds` on its worker, at most
    `max_size` runs. Runs that take `alone_seconds` or more go one by one, so that
    long runs spread over every worker. Before anything is known of a key, its runs
    go one by one too: the first ones measure the rest. A batch never takes so many
    runs that a free slot would be left without one.

    >>> sizer = BatchSizer(target_seconds=0.05, max_size=1000)
    >>> sizer.size("noop", ready=10_000, free=4)
    1
    >>> sizer.observe("noop", [0.0001] * 8)
    >>> sizer.size("noop", ready=10_000, free=4)
    500
    >>> sizer.size("noop", ready=10, free=4)
    3
    >>> sizer.observe("slow", [0.25])
    >>> sizer.size("slow", ready=16, free=4)
    1
    """

    __slots__ = ("_means", "alone_seconds", "max_size", "target_seconds", "weight")

    def __init__(
        self,
        *,
        target_seconds: float = 0.05,
        alone_seconds: float = 0.1,
        max_size: int = 1000,
        weight: float = 0.3,
    ) -> None:
        if not target_seconds > 0 or not alone_seconds > 0:
            raise ValueError("target_seconds and alone_seconds must be > 0")
        if max_size < 1:
            raise ValueError("max_size must be >= 1")
        if not 0 < weight <= 1:
            raise ValueError("weight must be in (0, 1]")
        self.target_seconds = target_seconds
        self.alone_seconds = alone_seconds
        self.max_size = max_size
        self.weight = weight
        self._means: dict[Hashable, float] = {}

    def observe(self, key: Hashable, seconds: Sequence[float]) -> None:
        """Learn from the durations (seconds per run) of runs of `key` that ended."""
        if not seconds:
            return
        mean = math.fsum(seconds) / len(seconds)
        old = self._means.get(key)
        if old is None:
            self._means[key] = mean
            return
        # A batch of n runs counts as n observations, up to a whole new estimate.
        weight = min(1.0, self.weight * len(seconds))
        self._means[key] = old + weight * (mean - old)

    def forget(self, key: Hashable) -> None:
        """Drop what is known of `key` (its task is gone)."""
        self._means.pop(key, None)

    def estimate(self, key: Hashable) -> float | None:
        """The seconds a run of `key` takes, as far as known (None: nothing yet)."""
        return self._means.get(key)

    def size(self, key: Hashable, ready: int, free: int, fixed: int | None = None) -> int:
        """How many of `ready` runs of `key` to put in the next batch, with `free` slots
        free (counting this batch's); `fixed` overrides the policy's size."""
        if ready <= 0:
            return 0
        if fixed is not None:
            wanted = max(1, fixed)
        else:
            mean = self._means.get(key)
            if mean is None or mean >= self.alone_seconds:
                return 1
            wanted = self.max_size if mean <= 0 else int(self.target_seconds / mean)
            wanted = max(1, min(self.max_size, wanted))
        # Spread the ready runs over the free slots rather than leave one idle.
        share = math.ceil(ready / max(1, free))
        return max(1, min(wanted, share, ready))


@final
class Batch(Generic[T]):
    """Runs that go to a worker together (`items`, of one `key`), from `BatchQueue.take`."""

    __slots__ = ("alone", "fixed", "items", "key", "priority", "sent")

    def __init__(
        self,
        key: Hashable,
        items: list[T],
        priority: int = 0,
        *,
        alone: bool = False,
        fixed: int | None = None,
    ) -> None:
        self.key = key
        self.items = items
        self.priority = priority
        self.alone = alone
        self.fixed = fixed
        self.sent = time.monotonic()

    def __len__(self) -> int:
        return len(self.items)

    def __repr__(self) -> str:
        return f"<Batch {self.key!r} of {len(self.items)}>"

    def after_crash(self, started: int | None) -> tuple[T | None, list[T]]:
        """The batch's worker died. Its runs run one after another in order, so with
        `started` the index of the last run known to have started, that run is the one
        that was executing: it crashed. The others did not fail: send them again (the
        ones before it ended, but their results died with the worker). With nothing
        known, every run goes again, each alone (see `BatchQueue.put`), so that a run
        that kills its worker does it alone next time and is the only one to crash.

        Returns (the crashed run or None, the runs to send again)."""
        if started is None or not 0 <= started < len(self.items):
            return None, list(self.items)
        crashed = self.items[started]
        return crashed, [item for i, item in enumerate(self.items) if i != started]


@final
class BatchQueue(Generic[T]):
    """Runs waiting to go to workers, packed into batches as slots free up.

    A runner `put`s each run that is ready to go (its upstream runs ended), calls
    `take()` to get the batches to send now, and `done(batch)` when a batch ended
    (its runs ended, or its worker died). At most `slots` batches are out at once:
    a runner sets it to the workers' slots times a small depth, so that each worker
    has its next batch at hand. Runs of a key go in the order they were put.

    Thread-safe. `take()` never holds a run back while a slot is free.
    """

    def __init__(self, slots: int, sizer: BatchSizer | None = None) -> None:
        self.slots = max(1, slots)
        self.sizer = sizer if sizer is not None else BatchSizer()
        self._lock = threading.Lock()
        # Per (priority, key): the runs waiting, in the order they were put.
        self._queues: OrderedDict[tuple[int, Hashable], deque[tuple[T, int | None]]] = OrderedDict()
        self._prioritised = False
        self._alone: deque[tuple[Hashable, T]] = deque()
        self._out = 0
        self._queued = 0
        self._workers_asked = -math.inf

    def __len__(self) -> int:
        """How many runs wait to be taken."""
        return self._queued

    @property
    def out(self) -> int:
        """How many batches were taken and are not done yet."""
        return self._out

    def put(
        self,
        item: T,
        key: Hashable,
        fixed: int | None = None,
        *,
        alone: bool = False,
        priority: int = 0,
    ) -> None:
        """Queue `item` (a run of kind `key`); `fixed` sets its batch size (1: never
        batched); `alone` sends it in a batch of its own, ahead of the others (a run
        sent again after its batch's worker died). Runs of a higher `priority` are
        taken first."""
        with self._lock:
            self._queued += 1
            if alone or fixed == 1:
                self._alone.append((key, item))
                return
            queue = self._queues.get((priority, key))
            if queue is None:
                queue = self._queues[(priority, key)] = deque()
                if priority:
                    self._prioritised = True
            queue.append((item, fixed))

    def discard(self, item: T) -> bool:
        """Take `item` out of the queue (cancelled before it went); False if not queued."""
        with self._lock:
            for entry in self._alone:
                if entry[1] is item:
                    self._alone.remove(entry)
                    self._queued -= 1
                    return True
            for queue in self._queues.values():
                for queued in queue:
                    if queued[0] is item:
                        queue.remove(queued)
                        self._queued -= 1
                        return True
        return False

    def take(self, everything: bool = False) -> list[Batch[T]]:
        """The batches to send now: one per free slot while runs wait (`everything`:
        all that wait, as when the runner stops and sends what is left)."""
        batches: list[Batch[T]] = []
        with self._lock:
            while self._queued and (everything or self._out < self.slots):
                free = max(1, self.slots - self._out)
                if self._alone:
                    key, item = self._alone.popleft()
                    batch = Batch(key, [item], alone=True)
                else:
                    waiting = [(k, q) for k, q in self._queues.items() if q]
                    if self._prioritised:
                        top = max(k[0] for k, _ in waiting)
                        slot, queue = next((k, q) for k, q in waiting if k[0] == top)
                    else:
                        slot, queue = waiting[0]
                    key = slot[1]
                    fixed = queue[0][1]
                    count = self.sizer.size(key, len(queue), free, fixed)
                    items = [queue.popleft()[0] for _ in range(count)]
                    batch = Batch(key, items, slot[0], fixed=fixed)
                    if not queue:
                        del self._queues[slot]
                    else:
                        self._queues.move_to_end(slot)  # other kinds get their turn
                self._queued -= len(batch)
                self._out += 1
                batches.append(batch)
        return batches

    def follow_workers(
        self, count: Callable[[], int], per_worker: int = 2, every: float = 5.0
    ) -> None:
        """Set `slots` to `per_worker` batches per worker slot of the engine, so that
        each worker has its next batch at hand: `count()` says how many there are, and
        is asked at most once every `every` seconds. When it raises, the engine cannot
        say now: the slots stay as they were."""
        now = time.monotonic()
        if now - self._workers_asked < every:
            return
        self._workers_asked = now
        try:
            workers = count()
        except Exception:
            return
        self.slots = max(per_worker, per_worker * workers)

    def give_back(self, batch: Batch[T], keep: int = 0) -> None:
        """Put the runs of `batch` after its first `keep`, taken but not sent (the
        runner has no room for them now), back at the head of the queue in their
        order. With `keep` 0 nothing of the batch goes and its slot is free again.
        Give batches back in the reverse of the order `take()` handed them."""
        with self._lock:
            items, batch.items = batch.items[keep:], batch.items[:keep]
            if not keep:
                self._out = max(0, self._out - 1)
            self._queued += len(items)
            if batch.alone:
                self._alone.extendleft((batch.key, item) for item in reversed(items))
                return
            slot = (batch.priority, batch.key)
            queue = self._queues.get(slot)
            if queue is None:
                queue = self._queues[slot] = deque()
                if batch.priority:
                    self._prioritised = True
            queue.extendleft((item, batch.fixed) for item in reversed(items))

    def done(self, batch: Batch[T], seconds: Sequence[float] | None = None) -> None:
        """`batch` ended: free its slot and learn from its runs' durations (seconds per
        run, measured on the worker; None: the time since it was sent, per run, which
        counts the engine's own cost too)."""
        if seconds is None:
            seconds = [(time.monotonic() - batch.sent) / max(1, len(batch))]
        with self._lock:
            self._out = max(0, self._out - 1)
            self.sizer.observe(batch.key, seconds)


def batch_size_of(task: Task[..., Any], default: int | None = None) -> int | None:
    """The batch size `task` asks for (its ``batch_size`` option), else `default` (a
    runner's ``batch_size`` option): None lets `BatchSizer` decide, 1 turns batching
    off, n fixes the size."""
    size: int | None = getattr(task.options, "batch_size", None)
    return default if size is None else size


def batch_size_problem(batch_size: object) -> str | None:
    """What is wrong with a runner's ``batch_size`` option, as one line of its
    `InvalidOptionsError`, or None when it is valid (None, or a whole number >= 1).

    >>> batch_size_problem(4) is None
    True
    >>> batch_size_problem(True)[-10:]
    '(got True)'
    """
    if batch_size is None or (
        type(batch_size) is int and batch_size >= 1  # bool is not int here
    ):
        return None
    return (
        "batch_size: must be None (sized from the runs' durations) or a whole number "
        f">= 1 (1 sends each run alone) (got {batch_size!r})"
    )


def run_batch(
    calls: Sequence[RunCall],
    upstreams: Sequence[Sequence[Any]] | None = None,
    *,
    attempts: Sequence[int] | None = None,
    retries: Literal["here", "runner"] = "here",
    timeout: Literal["engine", "runner"] = "engine",
    on_state: Callable[[int, State], None] | None = None,
    nested: TaskRunner | None = None,
) -> list[tuple[RemoteResult, float]]:
    """Run each call of a batch here, one after another, with `run_call`: each run
    keeps every rule it has alone. Never raises for a run (a `BaseException` that a
    task raises crashes that run only).

    - `upstreams`: per call, its upstream values (see `run_call`).
    - `attempts`: per call, the number of its first attempt here.
    - `on_state(index, state)`: hears RUNNING as each run's attempt starts (and
      Retrying), with the index of the run in the batch.
    - `retries`, `timeout`, `nested`: as for `run_call`.

    Returns, per call, its `RemoteResult` and the seconds it took (for
    `BatchSizer.observe`).
    """
    from baton._remote import run_call

    results: list[tuple[RemoteResult, float]] = []
    clock = time.perf_counter
    for index, call in enumerate(calls):
        report = None if on_state is None else _Indexed(on_state, index)
        started = clock()
        result = run_call(
            call,
            upstreams[index] if upstreams is not None else (),
            attempt=attempts[index] if attempts is not None else 1,
            retries=retries,
            timeout=timeout,
            on_state=report,
            nested=nested,
        )
        results.append((result, clock() - started))
    return results


@final
class _Indexed:
    __slots__ = ("index", "on_state")

    def __init__(self, on_state: Callable[[int, State], None], index: int) -> None:
        self.on_state = on_state
        self.index = index

    def __call__(self, state: State) -> None:
        self.on_state(self.index, state)
