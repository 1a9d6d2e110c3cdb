"""`Task.map`: one run per item, with broadcasting, `unmapped`, and bounded lazy maps."""

from __future__ import annotations

import collections
import io
import itertools
import logging
import threading
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, Generic, TypeVar, final

from baton._errors import MappingError
from baton._futures import DoneAndNotDone, Future, FutureList, wait
from baton._resolve import _ATOMIC, allow_failure, collect_futures, quote, unmapped
from baton._scope import current_scope
from baton._tags import tagged
from baton._taskrun import TaskRun

if TYPE_CHECKING:
    from baton._admission import Plan
    from baton._scope import RunScope
    from baton._task import Task

__all__ = ["LazyMap", "map_task"]

R = TypeVar("R")
logger = logging.getLogger("baton")

_STATIC_TYPES = (str, bytes, bytearray, memoryview, io.IOBase, dict)
_map_ids = itertools.count(1)


def _each_allowed(values: Iterable[Any]) -> Iterable[Any]:
    """`allow_failure(iterable)` mapped: each run gets its item with failure allowed."""
    if hasattr(values, "__len__"):
        return [allow_failure(item) for item in values]
    return (allow_failure(item) for item in values)


def _is_mapped(value: Any) -> bool:
    if isinstance(value, (unmapped, quote, Future, _STATIC_TYPES)):
        return False
    return isinstance(value, Iterable)


class _CallPlan:
    """How to build each run's (args, kwargs) from the bound call of `.map`."""

    def __init__(self, task: Task[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]):
        try:
            bound = task._signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"{task.name}.map(): {exc}") from None
        self.task = task
        self.map_id = next(_map_ids)  # each run's `TaskRun.map_id`
        # slots: (kind, name, value); kind is "pos", "varpos", "kw" or "varkw"
        self.slots: list[tuple[str, str, Any]] = []
        self.mapped: dict[str, Any] = {}
        positional_ok = True
        for name, param in task._signature.parameters.items():
            if name not in bound.arguments:
                if param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
                    positional_ok = False
                continue
            value = bound.arguments[name]
            if param.kind is param.VAR_POSITIONAL:
                self.slots.append(("varpos", name, value))
            elif param.kind is param.VAR_KEYWORD:
                # Each keyword caught by **kwargs maps like a named parameter.
                for key, item in value.items():
                    if _is_mapped(item):
                        self.mapped[key] = item
                    elif type(item) is allow_failure and _is_mapped(item.value):
                        self.mapped[key] = _each_allowed(item.value)
                    self.slots.append(("kw", key, item))
            else:
                if param.kind is param.POSITIONAL_ONLY or (
                    param.kind is param.POSITIONAL_OR_KEYWORD and positional_ok
                ):
                    kind = "pos"
                else:
                    kind = "kw"
                if _is_mapped(value):
                    self.mapped[name] = value
                elif type(value) is allow_failure and _is_mapped(value.value):
                    self.mapped[name] = _each_allowed(value.value)
                self.slots.append((kind, name, value))
        if not self.mapped:
            self._map_over_future_results()
        if not self.mapped:
            given = ", ".join(f"{n}={v!r}" for _, n, v in self.slots) or "no arguments"
            raise MappingError(
                f"{task.name}.map() needs at least one iterable argument to map over, "
                f"got {given}. Pass a list (or other iterable) for the parameter to map "
                f"over, or call {task.name}.submit(...) for a single run."
            )
        # Futures in the broadcast values are found once, not once per run.
        self.static_upstreams: list[Future[Any]] = []
        for _, name, value in self.slots:
            if name not in self.mapped and type(value) not in _ATOMIC:
                # unmapped(future): every run waits for that future like for a plain one
                whole = value.value if type(value) is unmapped else value
                collect_futures(whole, self.static_upstreams)

    def _map_over_future_results(self) -> None:
        """With nothing else to map over, a future given as an argument is waited for
        and its result mapped over (as a list of numbers from an upstream run)."""
        for index, (kind, name, value) in enumerate(self.slots):
            if isinstance(value, Future):
                result = value.result()
                if _is_mapped(result):
                    self.mapped[name] = result
                    self.slots[index] = (kind, name, result)

    def sized(self) -> bool:
        return all(hasattr(v, "__len__") for v in self.mapped.values())

    def check_lengths(self) -> int:
        lengths = {name: len(value) for name, value in self.mapped.items()}
        if len(set(lengths.values())) > 1:
            detail = ", ".join(f"{name} has {n}" for name, n in lengths.items())
            raise MappingError(
                f"{self.task.name}.map() got iterables of different lengths: {detail}. "
                "Map over iterables of the same length, or wrap the ones every run should "
                "receive whole in unmapped(...)."
            )
        return next(iter(lengths.values()))

    def calls(self) -> Iterator[tuple[tuple[Any, ...], dict[str, Any], dict[str, Any]]]:
        """Each run's (args, kwargs, mapped values), in input order."""
        names = list(self.mapped)
        iterators = [iter(self.mapped[name]) for name in names]
        index = 0
        while True:
            values: dict[str, Any] = {}
            exhausted: list[str] = []
            for name, iterator in zip(names, iterators, strict=False):
                try:
                    values[name] = next(iterator)
                except StopIteration:
                    exhausted.append(name)
            if exhausted:
                if len(exhausted) != len(names):
                    ended = ", ".join(exhausted)
                    going = ", ".join(n for n in names if n not in exhausted)
                    raise MappingError(
                        f"{self.task.name}.map() got iterables of different lengths: "
                        f"{ended} ended after {index} items while {going} went on. Map over "
                        "iterables of the same length, or wrap the ones every run should "
                        "receive whole in unmapped(...)."
                    )
                return
            index += 1
            args, kwargs = self._build(values)
            yield args, kwargs, values

    def _build(self, values: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        for kind, name, value in self.slots:
            if name in values:
                value = values[name]
            elif type(value) is unmapped:
                value = value.value
            if kind == "pos":
                args.append(value)
            elif kind == "kw":
                kwargs[name] = value
            elif kind == "varpos":
                args.extend(value)
            else:
                kwargs.update(value)
        return tuple(args), kwargs


def map_task(
    task: Task[..., R],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    wait_for: tuple[Any, ...],
    max_in_flight: int | None,
) -> FutureList[R] | LazyMap[R]:
    if max_in_flight is not None and (not isinstance(max_in_flight, int) or max_in_flight < 1):
        raise MappingError(
            f"{task.name}.map(): max_in_flight must be a whole number >= 1, got {max_in_flight!r}"
        )
    plan = _CallPlan(task, args, kwargs)
    plan.task = tagged(task)
    scope = current_scope()
    wait_upstreams: list[Future[Any]] = []
    if wait_for:
        collect_futures(wait_for, wait_upstreams)
    if max_in_flight is None and plan.sized():
        plan.check_lengths()
        futures: FutureList[R] = FutureList()
        # Where the flow run has limits, its runs stand alike with them: asked once.
        limits = scope.plan_of(plan.task)
        for index, (call_args, call_kwargs, values) in enumerate(plan.calls()):
            futures.append(
                _submit_fast(
                    plan,
                    scope,
                    call_args,
                    call_kwargs,
                    values,
                    wait_for,
                    wait_upstreams,
                    index,
                    limits,
                    True,
                )
            )
        return futures
    if max_in_flight is None:
        from baton._settings import get_settings

        max_in_flight = get_settings().map_max_in_flight
    lazy: LazyMap[R] = LazyMap(plan, scope, wait_for, wait_upstreams, max_in_flight)
    scope.add_lazy_map(lazy)
    lazy.fill()
    return lazy


def _submit_fast(
    plan: _CallPlan,
    scope: RunScope,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    values: dict[str, Any],
    wait_for: tuple[Any, ...],
    wait_upstreams: list[Future[Any]],
    index: int,
    limits: Plan | None = None,
    planned: bool = False,
) -> Future[Any]:
    """Submit one mapped run (the `index`-th); only the mapped values are scanned for
    futures. With `planned`, `limits` is `scope.plan_of(plan.task)` already."""
    upstreams = plan.static_upstreams + wait_upstreams
    for value in values.values():
        if type(value) not in _ATOMIC:
            collect_futures(value, upstreams)
    run = TaskRun(plan.task, args, kwargs, scope, wait_for)
    run.map_id = plan.map_id
    run.map_index = index
    return scope.submit(run, upstreams, limits, planned)


@final
class LazyMap(Generic[R]):
    """The runs of a `.map` over a lazy iterable, submitted as they are consumed.

    At most `max_in_flight` runs are unfinished at any time, so mapping over a
    generator of millions of items keeps memory flat. Iterate it to get the
    futures in input order; `.result()` collects every result in a list (which
    holds them all). When the flow ends, a map nobody iterated is run to its end; a
    map that was iterated and then left stops feeding runs (what it submitted still
    runs), so a map over an endless input does not keep the flow from returning.
    """

    def __init__(
        self,
        plan: _CallPlan,
        scope: RunScope,
        wait_for: tuple[Any, ...],
        wait_upstreams: list[Future[Any]],
        max_in_flight: int,
    ) -> None:
        self._plan = plan
        self._scope = scope
        self._wait_for = wait_for
        self._wait_upstreams = wait_upstreams
        self.max_in_flight = max_in_flight
        self._calls = plan.calls()
        self._ahead: collections.deque[Future[R]] = collections.deque()
        self._slots = threading.BoundedSemaphore(max_in_flight)
        self._lock = threading.RLock()
        self._exhausted = False
        self._read = False
        self._error: Exception | None = None
        self._dropped = False  # drained as the flow ended, its futures not kept
        self.submitted = 0

    def _release(self, _: Future[Any]) -> None:
        self._slots.release()

    def _submit_next(self) -> bool:
        """Submit one more run, waiting for a free slot. False when the input is used up."""
        if self._exhausted:
            return False
        try:
            args, kwargs, values = next(self._calls)
        except StopIteration:
            self._exhausted = True
            return False
        except BaseException:
            self._exhausted = True
            raise
        from baton._futures import blocking_section

        if not self._slots.acquire(blocking=False):
            with blocking_section():
                self._slots.acquire()
        try:
            future = _submit_fast(
                self._plan,
                self._scope,
                args,
                kwargs,
                values,
                self._wait_for,
                self._wait_upstreams,
                self.submitted,
            )
        except BaseException:
            self._slots.release()
            raise
        future._on_done(self._release)
        self._ahead.append(future)
        self.submitted += 1
        return True

    def fill(self) -> None:
        """Submit runs until `max_in_flight` are ahead of the consumer or the input ends.
        If the input raises after some runs went, their futures are handed out first and
        the error is raised where the map is iterated (at once if none went)."""
        with self._lock:
            while len(self._ahead) < self.max_in_flight:
                try:
                    if not self._submit_next():
                        return
                except Exception as exc:
                    if not self._ahead:
                        raise
                    self._error = exc
                    return

    def __iter__(self) -> Iterator[Future[R]]:
        return self

    def __next__(self) -> Future[R]:
        with self._lock:
            self._read = True
            if not self._ahead:
                error, self._error = self._error, None
                if error is not None:
                    raise error
                if self._dropped:
                    raise RuntimeError(
                        f"The runs of this {self._plan.task.name}.map() were submitted as its "
                        f"flow ended, with nothing reading the map, and their futures were not "
                        "kept (a map over a long input would hold them all). Read the map "
                        "inside the flow (iterate it, or call .result() or .wait() on it), "
                        "or map over a list to get a FutureList that outlives the flow."
                    )
                if not self._submit_next():
                    raise StopIteration
            future = self._ahead.popleft()
            if len(self._ahead) < self.max_in_flight:
                try:
                    self._submit_next()
                except Exception as exc:
                    # Hand out the futures submitted before the input failed first.
                    self._error = exc
            return future

    def drain(self) -> None:
        """At the end of the flow: a map nobody read submits everything left (and drops
        the futures; the flow still tracks failures); a map that was read and then left
        stops where its reader stopped, so an endless input does not keep the flow."""
        with self._lock:
            if self._read and not self._exhausted:
                self.close()
                logger.info(
                    "%s.map(): the flow ended while %d run(s) had been submitted and nothing "
                    "read the map further; the rest of its input is not submitted.",
                    self._plan.task.name,
                    self.submitted,
                )
                error, self._error = self._error, None
                if error is not None:
                    raise error
                return
            while self._submit_next():
                self._ahead.clear()
            self._ahead.clear()
            self._dropped = self.submitted > 0
            error, self._error = self._error, None
            if error is not None:
                raise error

    def close(self) -> None:
        """Stop submitting: what was not submitted yet never runs."""
        with self._lock:
            self._exhausted = True
            self._calls.close()  # type: ignore[attr-defined]

    def result(self, timeout: float | None = None, raise_on_failure: bool = True) -> list[R]:
        """Every remaining run's result, in input order (this holds them all in memory)."""
        return [future.result(timeout, raise_on_failure) for future in self]

    def wait(self, timeout: float | None = None) -> DoneAndNotDone:
        """Submit and wait for every remaining run; see `baton.wait`."""
        return wait(list(self), timeout)

    def __repr__(self) -> str:
        return (
            f"<LazyMap of {self._plan.task.name!r}: {self.submitted} submitted, "
            f"max_in_flight={self.max_in_flight}>"
        )
