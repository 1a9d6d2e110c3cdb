"""What a Ray driver sends with each run: its task, pickled once per process (and stored
once in the object store when large), and its head, pickled as plain data when it is."""

from __future__ import annotations

import io
import itertools
import pickle
import threading
import uuid
import weakref
from typing import TYPE_CHECKING, Any, Final

import ray
from baton.runners import Upstream, dumps

if TYPE_CHECKING:
    from baton import Task
    from baton.runners import TaskRun

__all__ = ["pack", "task_payload"]

# A pickled task bigger than this goes to the object store once, instead of with each run.
_BLOB_INLINE: Final = 32 * 1024
_process_token = uuid.uuid4().hex[:12]
_task_counter = itertools.count()
_task_lock = threading.Lock()
_task_payloads: weakref.WeakKeyDictionary[Task[..., Any], tuple[str, Any]] = (
    weakref.WeakKeyDictionary()
)


def task_payload(run: TaskRun) -> tuple[str, Any]:
    """(key, pickled task or [its ObjectRef]) of the run's task, made once per task: a
    worker loads a task once, and finds it by key afterwards."""
    task = run.task
    with _task_lock:
        found = _task_payloads.get(task)
    if found is not None:
        return found
    try:
        blob = dumps(task)
    except Exception as exc:
        raise pickle.PicklingError(
            f"Task {task.name!r} cannot be pickled to send it to Ray workers "
            f"({type(exc).__name__}: {exc}). Its function, its options' hooks, or a global "
            "or closure variable they use hold something unpicklable (a lock, an open file "
            "or connection, a client): create that object inside the task."
        ) from exc
    payload: Any = blob if len(blob) <= _BLOB_INLINE else [ray.put(blob)]
    found = (f"{_process_token}-{next(_task_counter)}", payload)
    with _task_lock:
        _task_payloads[task] = found
    return found


class _NotPlain(Exception):
    pass


class _PlainPickler(pickle.Pickler):
    """Pickles plain data only (the builtin scalars and containers, which never reach
    this hook, and upstream placeholders). Anything else is left to Ray's serializer,
    which pickles classes of ``__main__`` by value and passes ObjectRefs on with
    their ownership."""

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is Upstream:
            return NotImplemented
        raise _NotPlain


def pack(head: tuple[Any, ...]) -> Any:
    """The run's head as pickled bytes when it is plain data: Ray passes bytes on as
    they are, where for a tuple it builds a cloudpickle pickler per call. Else the
    tuple itself, for Ray to serialize."""
    buffer = io.BytesIO()
    try:
        _PlainPickler(buffer, pickle.HIGHEST_PROTOCOL).dump(head)
    except Exception:
        return head
    return buffer.getvalue()
