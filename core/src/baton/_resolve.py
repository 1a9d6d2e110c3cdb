"""Finding futures inside task arguments and replacing them with results.

Futures may stand directly in the arguments or nested in lists, tuples, dicts,
sets, dataclass instances and pydantic models. `quote(x)` passes `x` through
untouched (and untraversed, which is also how to skip scanning a large input);
`allow_failure(future)` passes a failed upstream's exception in instead of
failing the downstream run. Containers nested deeper than 50 levels (or holding
themselves) are passed on as they are, unscanned.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar, final

if TYPE_CHECKING:
    from baton._futures import Future

__all__ = [
    "Upstream",
    "allow_failure",
    "collect_futures",
    "fill_upstreams",
    "quote",
    "resolve",
    "to_portable",
    "unmapped",
]

T = TypeVar("T")

# How deep containers are scanned for futures (and resolved): deeper nesting, or a
# container that holds itself, is passed on as it is.
_MAX_DEPTH = 50

# Types that can never contain a future: the scan stops at them at once.
_ATOMIC: frozenset[type] = frozenset(
    {int, float, complex, bool, str, bytes, bytearray, type(None), range, type}
)


class _Annotation(Generic[T]):
    __slots__ = ("value",)

    def __init__(self, value: T) -> None:
        self.value = value

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.value!r})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.value == self.value

    def __hash__(self) -> int:
        return hash((type(self), id(self.value)))

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.value,))


@final
class unmapped(_Annotation[T]):
    """Pass the same value to every run of a `.map`, even if it is iterable.

    >>> from baton import task, unmapped
    >>> @task
    ... def add_all(x, ys):
    ...     return x + sum(ys)
    >>> add_all.map([1, 2], unmapped([10, 20])).result()
    [31, 32]
    """


@final
class quote(_Annotation[T]):
    """Pass a value to a task exactly as it is: not scanned for futures, not mapped over.

    Use it for large inputs whose scan would cost time, or to pass a future itself.
    """


@final
class allow_failure(_Annotation[T]):
    """Run the downstream task even if this upstream future fails.

    The downstream receives the upstream's result if it completed, and its exception
    if it did not.
    """


def _is_model(obj: Any) -> bool:
    return hasattr(type(obj), "__pydantic_fields__") and not isinstance(obj, type)


def collect_futures(obj: Any, found: list[Future[Any]], depth: int = 0) -> None:
    """Append every future reachable in `obj` to `found` (`allow_failure` ones too)."""
    from baton._futures import Future

    kind = type(obj)
    if kind in _ATOMIC or kind is quote:
        return
    if isinstance(obj, Future):
        found.append(obj)
    elif kind is allow_failure:
        collect_futures(obj.value, found, depth)
    elif depth > _MAX_DEPTH:
        return
    elif kind is list or kind is tuple or kind is set or kind is frozenset:
        for item in obj:
            if type(item) not in _ATOMIC:
                collect_futures(item, found, depth + 1)
    elif kind is dict:
        for key, value in obj.items():
            collect_futures(key, found, depth + 1)
            collect_futures(value, found, depth + 1)
    elif isinstance(obj, (list, tuple, set, frozenset)):
        for item in obj:
            collect_futures(item, found, depth + 1)
    elif isinstance(obj, dict):
        for key, value in obj.items():
            collect_futures(key, found, depth + 1)
            collect_futures(value, found, depth + 1)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for field in dataclasses.fields(obj):
            collect_futures(getattr(obj, field.name, None), found, depth + 1)
    elif _is_model(obj):
        for name in type(obj).__pydantic_fields__:
            collect_futures(getattr(obj, name, None), found, depth + 1)


_MISSING = object()


def resolve(obj: Any, result_of: Callable[[Future[Any], bool], Any], depth: int = 0) -> Any:
    """Return `obj` with every future replaced by `result_of(future, allow_failed)`.

    Containers are rebuilt only where they held a future; everything else is
    passed through as the same object. `quote` is unwrapped, untraversed.
    """
    from baton._futures import Future, FutureList

    kind = type(obj)
    if kind in _ATOMIC:
        return obj
    if kind is quote:
        return obj.value
    if isinstance(obj, Future):
        return result_of(obj, False)
    if kind is allow_failure:
        inner = obj.value
        if isinstance(inner, Future):
            return result_of(inner, True)
        return resolve(inner, lambda f, _allowed: result_of(f, True), depth)
    # Stop where `collect_futures` stops: a future it did not find is not an upstream
    # to wait for, and a container that holds itself must not recurse forever.
    if depth > _MAX_DEPTH:
        return obj
    depth += 1
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = [resolve(item, result_of, depth) for item in obj]
        if kind is FutureList:  # its results are no longer futures: a plain list
            return items
        if all(a is b for a, b in zip(items, obj, strict=False)):
            return obj
        if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple
            return kind(*items)
        return kind(items)
    if isinstance(obj, dict):
        pairs = [
            (resolve(k, result_of, depth), resolve(v, result_of, depth)) for k, v in obj.items()
        ]
        if all(
            k1 is k2 and v1 is v2 for (k1, v1), (k2, v2) in zip(pairs, obj.items(), strict=False)
        ):
            return obj
        new = copy.copy(obj)
        new.clear()
        new.update(pairs)
        return new
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        changes = {}
        for field in dataclasses.fields(obj):
            value = getattr(obj, field.name, _MISSING)
            if value is _MISSING:
                continue
            new_value = resolve(value, result_of, depth)
            if new_value is not value:
                changes[field.name] = new_value
        if not changes:
            return obj
        new = copy.copy(obj)  # type: ignore[arg-type]
        for name, value in changes.items():
            object.__setattr__(new, name, value)
        return new
    if _is_model(obj):
        updates = {}
        for name in type(obj).__pydantic_fields__:
            value = getattr(obj, name, _MISSING)
            if value is _MISSING:
                continue
            new_value = resolve(value, result_of, depth)
            if new_value is not value:
                updates[name] = new_value
        return obj.model_copy(update=updates) if updates else obj
    return obj


@final
class Upstream:
    """Where an upstream run's result goes, in a call shipped to another engine.

    `index` is the upstream's position in the values the engine passes back in.
    """

    __slots__ = ("allowed", "index", "name")

    def __init__(self, index: int, name: str, allowed: bool) -> None:
        self.index = index
        self.name = name
        self.allowed = allowed

    def __reduce__(self) -> tuple[Any, ...]:
        return (Upstream, (self.index, self.name, self.allowed))

    def __repr__(self) -> str:
        return f"Upstream({self.index}, {self.name!r})"


def to_portable(obj: Any, upstreams: list[Future[Any]]) -> Any:
    """`obj` with each future replaced by an `Upstream` placeholder; the futures are
    appended to `upstreams` (each once) in placeholder order."""
    positions = {id(f): i for i, f in enumerate(upstreams)}

    def place(future: Future[Any], allowed: bool) -> Upstream:
        index = positions.get(id(future))
        if index is None:
            index = positions[id(future)] = len(upstreams)
            upstreams.append(future)
        return Upstream(index, future.name, allowed)

    return resolve(obj, place)


class UpstreamNotCompleted(Exception):
    """An upstream placeholder whose run did not complete (and failure was not allowed)."""

    def __init__(self, placeholder: Upstream, state: Any) -> None:
        super().__init__(placeholder.name)
        self.placeholder = placeholder
        self.state = state


def fill_upstreams(obj: Any, values: tuple[Any, ...], depth: int = 0) -> Any:
    """Replace `Upstream` placeholders in `obj` by `values[index]`.

    A value that is a `State` stands for the whole outcome of the upstream run: its
    result if it completed, its exception if failure was allowed, else
    `UpstreamNotCompleted` is raised. Any other value is the upstream's result.
    """
    from baton._states import State

    kind = type(obj)
    if kind in _ATOMIC:
        return obj
    if kind is Upstream:
        value = values[obj.index]
        if isinstance(value, State):
            if value.is_completed():
                return value.result()
            if obj.allowed:
                return value.result(raise_on_failure=False)
            raise UpstreamNotCompleted(obj, value)
        return value
    if depth > _MAX_DEPTH:
        return obj
    depth += 1
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = [fill_upstreams(item, values, depth) for item in obj]
        if all(a is b for a, b in zip(items, obj, strict=False)):
            return obj
        if isinstance(obj, tuple) and hasattr(obj, "_fields"):
            return kind(*items)
        return kind(items)
    if isinstance(obj, dict):
        # Keys too: `to_portable` puts placeholders wherever `resolve` finds futures.
        pairs = [
            (fill_upstreams(k, values, depth), fill_upstreams(v, values, depth))
            for k, v in obj.items()
        ]
        if all(
            k1 is k2 and v1 is v2 for (k1, v1), (k2, v2) in zip(pairs, obj.items(), strict=False)
        ):
            return obj
        new = copy.copy(obj)
        new.clear()
        new.update(pairs)
        return new
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        updates = {}
        for field in dataclasses.fields(obj):
            value = getattr(obj, field.name, _MISSING)
            if value is not _MISSING:
                filled = fill_upstreams(value, values, depth)
                if filled is not value:
                    updates[field.name] = filled
        if not updates:
            return obj
        new = copy.copy(obj)  # type: ignore[arg-type]
        for name, value in updates.items():
            object.__setattr__(new, name, value)
        return new
    if _is_model(obj):
        changes = {}
        for name in type(obj).__pydantic_fields__:
            value = getattr(obj, name, _MISSING)
            if value is not _MISSING:
                filled = fill_upstreams(value, values, depth)
                if filled is not value:
                    changes[name] = filled
        return obj.model_copy(update=changes) if changes else obj
    return obj
