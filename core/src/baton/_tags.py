"""`with tags(...)`: tags added to every task run submitted inside the block."""

from __future__ import annotations

import contextlib
import contextvars
import threading
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from baton._task import Task

__all__ = ["current_tags", "tagged", "tags"]

_current: contextvars.ContextVar[frozenset[str]] = contextvars.ContextVar(
    "baton_tags", default=frozenset()
)
_lock = threading.Lock()
# A task's copies with more tags, one per set of tags, for as long as the task lives.
_copies: weakref.WeakKeyDictionary[Task[..., Any], dict[frozenset[str], Task[..., Any]]] = (
    weakref.WeakKeyDictionary()
)


@contextlib.contextmanager
def tags(*names: str) -> Iterator[frozenset[str]]:
    """Add tags to every task run submitted (or called) inside the block, as Prefect's
    `tags` does. Blocks nest, adding up; the tags join each task's own `tags=` option,
    so everything that reads a run's tags (concurrency limits, runner placement tags
    such as Dask's and Ray's, observers through `run.task.options.tags`) sees them.

    >>> from baton import flow, tags, task
    >>> @task(tags={"etl"})
    ... def load():
    ...     from baton import current_task_run
    ...     return sorted(current_task_run().task.options.tags)
    >>> @flow
    ... def nightly():
    ...     with tags("nightly", "db"):
    ...         return load()
    >>> nightly()
    ['db', 'etl', 'nightly']

    Tags apply where runs are submitted: a lazy `.map` takes the tags active when
    `.map` is called.
    """
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"tags(...) takes tag names as strings, got {name!r}")
    added = _current.get() | frozenset(names)
    token = _current.set(added)
    try:
        yield added
    finally:
        _current.reset(token)


def current_tags() -> frozenset[str]:
    """The tags of the enclosing `with tags(...)` blocks."""
    return _current.get()


def tagged(task: Task[..., Any]) -> Task[..., Any]:
    """`task`, or its copy with the tags of the enclosing `with tags(...)` blocks added."""
    extra = _current.get()
    if not extra or extra <= task.options.tags:
        return task
    with _lock:
        copies = _copies.get(task)
        if copies is None:
            copies = _copies[task] = {}
        copy = copies.get(extra)
    if copy is None:
        copy = task.with_options(tags=task.options.tags | extra)
        with _lock:
            copy = copies.setdefault(extra, copy)
    return copy
