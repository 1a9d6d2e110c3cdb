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
from collections.abc import Callable, Iterable
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
    A flow that returns a quote returns the quote object itself (as Prefect does);
    `.unquote()` gives the value back.

    >>> from baton import quote
    >>> quote([1, 2]).unquote()
    [1, 2]
    """

    def unquote(self) -> T:
        """The quoted value."""
        return self.value


@final
class allow_failure(_Annotation[T]):
    """Run the downstream task even if this upstream future fails.

    The downstream receives the upstream's result if it completed, and its exception
    if it did not.
    """


def _is_model(obj: Any) -> bool:
    return hasattr(type(obj), "__pydantic_fields__") and not isinstance(obj, type)


# What a visitor returns for a value it does not replace: look inside it.
_DESCEND: Any = object()
_MISSING = object()

Visit = Callable[[Any, int], Any]


def _walk(obj: Any, visit: Visit, depth: int = 0, rebuild: bool = True) -> Any:
    """The one walk over task arguments: `obj` with `visit(value, depth)` applied to
    every value reachable in it (itself first), which returns a replacement or
    `_DESCEND` to look inside containers: lists, tuples, sets, dicts (keys too),
    dataclass instances and pydantic models.

    Containers are rebuilt only where something inside was replaced; everything else
    is passed through as the same object. Deeper than `_MAX_DEPTH`, or in a container
    that holds itself, values are passed on as they are. With `rebuild=False` (a
    visitor that only looks) nothing is rebuilt and `obj` is returned.
    """
    kind = type(obj)
    if kind in _ATOMIC:
        return obj
    replaced = visit(obj, depth)
    if replaced is not _DESCEND:
        return replaced
    if depth > _MAX_DEPTH:
        return obj
    depth += 1
    if not rebuild:
        for child in _children(obj):
            if type(child) not in _ATOMIC:
                _walk(child, visit, depth, False)
        return obj
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = [item if type(item) in _ATOMIC else _walk(item, visit, depth) for item in obj]
        if kind is _future_list():  # its results are no longer futures: a plain list
            return items
        if all(a is b for a, b in zip(items, obj, strict=False)):
            return obj
        if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple
            return kind(*items)
        return kind(items)
    if isinstance(obj, dict):
        pairs = [(_walk(k, visit, depth), _walk(v, visit, depth)) for k, v in obj.items()]
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
            if value is not _MISSING:
                new_value = _walk(value, visit, depth)
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
            if value is not _MISSING:
                new_value = _walk(value, visit, depth)
                if new_value is not value:
                    updates[name] = new_value
        return obj.model_copy(update=updates) if updates else obj
    return obj


def _children(obj: Any) -> Iterable[Any]:
    """What `_walk` looks inside, in the same order, for a walk that rebuilds nothing."""
    kind = type(obj)
    if kind is list or kind is tuple or isinstance(obj, (list, tuple, set, frozenset)):
        return obj  # type: ignore[no-any-return]
    if isinstance(obj, dict):
        return [part for pair in obj.items() for part in pair]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return [getattr(obj, field.name, None) for field in dataclasses.fields(obj)]
    if _is_model(obj):
        return [getattr(obj, name, None) for name in type(obj).__pydantic_fields__]
    return ()


def _future_list() -> type:
    from baton._futures import FutureList

    return FutureList


def collect_futures(
    obj: Any,
    found: list[Future[Any]],
    depth: int = 0,
    state_as_future: Callable[[Any], Future[Any]] | None = None,
) -> Any:
    """Append every future reachable in `obj` to `found` (`allow_failure` ones too).

    With `state_as_future`, each `State` in `obj` is replaced by the future it makes
    (and collected): `obj` is returned with those replacements.
    """
    from baton._futures import Future
    from baton._states import State

    if type(obj) in _ATOMIC:
        return obj
    if type(obj) is Future:  # an upstream passed as it is: the common case
        found.append(obj)
        return obj

    states: list[State] = []
    collected: list[Future[Any]] = []

    def visit(value: Any, depth: int) -> Any:
        kind = type(value)
        if kind is quote:
            return value
        if isinstance(value, Future):
            collected.append(value)
            return value
        if kind is allow_failure:
            inner = _walk(value.value, visit, depth, rebuild)
            return value if inner is value.value else allow_failure(inner)
        if kind is State and state_as_future is not None:
            if not rebuild:
                states.append(value)
                return value
            future = state_as_future(value)
            collected.append(future)
            return future
        return _DESCEND

    # Look first; rebuild only in the rare case of a State to replace.
    rebuild = False
    _walk(obj, visit, depth, rebuild)
    if states:
        collected.clear()
        rebuild = True
        obj = _walk(obj, visit, depth, rebuild)
    found.extend(collected)
    return obj


def _plain(obj: Any) -> bool:
    """Whether `obj` surely holds no future: a value of an atomic type, a tuple of them,
    or an empty dict (the arguments and keyword arguments of most runs)."""
    kind = type(obj)
    if kind in _ATOMIC:
        return True
    if kind is tuple:
        return all(type(v) in _ATOMIC for v in obj)
    return kind is dict and not obj


def resolve(
    obj: Any,
    result_of: Callable[[Future[Any], bool], Any],
    depth: int = 0,
    *,
    keep_quotes: bool = False,
) -> Any:
    """Return `obj` with every future replaced by `result_of(future, allow_failed)`.

    Containers are rebuilt only where they held a future; everything else is
    passed through as the same object. `quote` is unwrapped (kept with
    `keep_quotes`), untraversed.
    """
    if _plain(obj):
        return obj  # the arguments of most runs: nothing to look into
    kind = type(obj)
    from baton._futures import Future

    if kind is Future:
        return result_of(obj, False)
    if kind is tuple and all(type(v) in _ATOMIC or type(v) is Future for v in obj):
        return tuple(v if type(v) in _ATOMIC else result_of(v, False) for v in obj)

    def visit(value: Any, depth: int, allowed: bool = False) -> Any:
        kind = type(value)
        if kind is quote:
            return value if keep_quotes else value.value
        if isinstance(value, Future):
            return result_of(value, allowed)
        if kind is allow_failure:
            return _walk(value.value, visit_allowed, depth)
        return _DESCEND

    def visit_allowed(value: Any, depth: int) -> Any:
        return visit(value, depth, True)

    return _walk(obj, visit, depth)


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
    if _plain(obj):
        return obj
    positions = {id(f): i for i, f in enumerate(upstreams)}

    def place(future: Future[Any], allowed: bool) -> Upstream:
        index = positions.get(id(future))
        if index is None:
            index = positions[id(future)] = len(upstreams)
            upstreams.append(future)
        return Upstream(index, future.name, allowed)

    return resolve(obj, place)


def resolve_placeholders(obj: Any, found: Callable[[Upstream], object]) -> None:
    """Call `found` with every `Upstream` placeholder in `obj`."""

    def visit(value: Any, depth: int) -> None:
        if type(value) is Upstream:
            found(value)
            return
        if depth > _MAX_DEPTH or type(value) in _ATOMIC:
            return
        if isinstance(value, (list, tuple, set, frozenset)):
            for item in value:
                visit(item, depth + 1)
        elif isinstance(value, dict):
            for key, item in value.items():
                visit(key, depth + 1)
                visit(item, depth + 1)
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            for field in dataclasses.fields(value):
                visit(getattr(value, field.name, None), depth + 1)
        elif _is_model(value):
            for name in type(value).__pydantic_fields__:
                visit(getattr(value, name, None), depth + 1)

    visit(obj, 0)


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

    def visit(placeholder: Any, depth: int) -> Any:
        if type(placeholder) is not Upstream:
            return _DESCEND
        value = values[placeholder.index]
        if isinstance(value, State):
            if value.is_completed():
                return value.result()
            if placeholder.allowed:
                return value.result(raise_on_failure=False)
            raise UpstreamNotCompleted(placeholder, value)
        return value

    return _walk(obj, visit, depth)
