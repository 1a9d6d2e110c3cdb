"""What crosses between a worker and the flow's process: pickling, and the wording of
what cannot cross (unpicklable arguments, results and exceptions)."""

from __future__ import annotations

import inspect
import pickle
import traceback
from typing import TYPE_CHECKING, Any

from baton._errors import RemoteTaskError
from baton._states import State, StateType

if TYPE_CHECKING:
    from baton._task import Task
    from baton._taskrun import TaskRun

__all__ = [
    "LARGE_BYTES",
    "PROTOCOL",
    "cloudpickle_dumps",
    "dumps",
    "loads",
    "portable_state",
    "rebuild_problem",
    "unpicklable_arguments",
    "unrebuildable_result",
]

PROTOCOL = pickle.HIGHEST_PROTOCOL


LARGE_BYTES = 1 << 20
"""A `bytes` value at least this long travels out of band when `dumps` is given a
list of buffers."""


def dumps(obj: Any, buffers: list[Any] | None = None) -> bytes:
    """Pickle with the standard pickler, falling back to cloudpickle for what it cannot
    pickle by reference (functions and classes of ``__main__``, closures, lambdas).

    With `buffers`, large data goes out of band (pickle protocol 5) instead of into
    the returned bytes: every `pickle.PickleBuffer` an object reduces to (NumPy
    arrays, ...) and each `bytes` value of at least `LARGE_BYTES` found in
    `obj` or up to three levels of containers (list, tuple, dict values) inside it are
    appended to `buffers`, to be sent beside the pickle without a copy and handed to
    `loads`.
    """
    if buffers is None:
        try:
            return pickle.dumps(obj, PROTOCOL)
        except Exception:
            return cloudpickle_dumps(obj)
    try:
        return _dump_out_of_band(pickle.Pickler, obj, buffers)
    except Exception:
        del buffers[:]
        return cloudpickle_dumps(obj, buffers)


def loads(data: bytes | bytearray | memoryview, buffers: list[Any] | None = None) -> Any:
    """Unpickle what `dumps` made; `buffers` are its out-of-band buffers, in order
    (each `bytes` given back as a `bytes` object, the others as any writable buffer)."""
    if not buffers:
        return pickle.loads(data)
    import io

    unpickler = _OutOfBandUnpickler(
        io.BytesIO(data), buffers=[b for b in buffers if type(b) is not bytes]
    )
    unpickler.entries = buffers
    return unpickler.load()


_BYTES_ID = "baton-large-bytes"


class _OutOfBandUnpickler(pickle.Unpickler):
    entries: list[Any]

    def persistent_load(self, pid: Any) -> Any:
        if type(pid) is tuple and len(pid) == 2 and pid[0] == _BYTES_ID:
            return self.entries[pid[1]]
        raise pickle.UnpicklingError(f"unknown persistent id {pid!r}")


def _find_large_bytes(obj: Any, found: dict[int, bytes], depth: int) -> None:
    """Note the large `bytes` in `obj` and up to `depth` levels of lists, tuples and
    dict values inside it (a result's State and value count as no level), looking at
    a bounded number of objects."""
    budget = [2048]
    _look(obj, found, depth, budget)


def _look(obj: Any, found: dict[int, bytes], depth: int, budget: list[int]) -> None:
    budget[0] -= 1
    kind = type(obj)
    if kind is bytes:
        if len(obj) >= LARGE_BYTES:
            found[id(obj)] = obj
        return
    if kind is dict:
        items: Any = obj.values()
    elif kind in (list, tuple):
        items = obj
    else:
        inner = _contents(obj)
        if inner is not None:
            _look(inner, found, depth, budget)
        return
    if depth <= 0:
        return
    for item in items:
        if budget[0] <= 0:
            return
        _look(item, found, depth - 1, budget)


def _contents(obj: Any) -> Any:
    """The value inside a RemoteResult or a completed State (what a worker sends)."""
    from baton._states import State

    if isinstance(obj, State):
        return obj._data if obj.type is StateType.COMPLETED else None
    state = getattr(obj, "state", None) if type(obj).__name__ == "RemoteResult" else None
    return state if isinstance(state, State) else None


def _dump_out_of_band(pickler: Any, obj: Any, buffers: list[Any]) -> bytes:
    import io

    large: dict[int, bytes] = {}
    _find_large_bytes(obj, large, 3)
    stream = io.BytesIO()

    def out_of_band(buffer: pickle.PickleBuffer) -> bool:
        buffers.append(buffer)
        return False

    if large:

        class Pickler(pickler):  # type: ignore[misc]
            def persistent_id(self, value: Any) -> Any:
                if type(value) is bytes and id(value) in large:
                    buffers.append(value)
                    return (_BYTES_ID, len(buffers) - 1)
                return None

        pickler = Pickler
    pickler(stream, protocol=PROTOCOL, buffer_callback=out_of_band).dump(obj)
    return stream.getvalue()


_pickler: Any = None

# Results of these types are rebuilt from their pickle wherever they were pickled.
_REBUILT_TYPES = frozenset({int, float, bool, complex, type(None), str, bytes, bytearray})


def rebuild_problem(value: Any) -> str:
    """Why `value` pickles but cannot be rebuilt from its pickle, or ``''`` if it can.

    A worker calls it on a result that will not travel to the flow's process at once
    (it stays in the engine's store until read), so that such a run fails, with
    `unrebuildable_result`, instead of completing with a result that nobody can read.
    Plain data returns at once; anything else is pickled and unpickled here, with large
    buffers (NumPy arrays, `pickle.PickleBuffer`) passed out of band, so not copied.
    A value that does not pickle at all is not judged here: `''`.
    """
    if type(value) in _REBUILT_TYPES:
        return ""
    buffers: list[pickle.PickleBuffer] = []
    try:
        data = pickle.dumps(value, 5, buffer_callback=buffers.append)
    except Exception:
        import cloudpickle  # type: ignore[import-untyped]

        buffers = []
        try:
            data = cloudpickle.dumps(value, 5, buffer_callback=buffers.append)
        except Exception:
            return ""
    try:
        pickle.loads(data, buffers=buffers)
    except Exception as exc:
        return _brief(exc)
    return ""


def unrebuildable_result(task_name: str, run_name: str, problem: str) -> State:
    """The FAILED state of a run whose result pickles but cannot be rebuilt (`problem`, as
    `rebuild_problem` says it): the same words on every runner."""
    error = pickle.UnpicklingError(
        f"The result of task run {run_name!r} (task {task_name!r}) cannot be unpickled: "
        f"it pickles, but cannot be rebuilt from its pickle ({problem}). Return plain "
        "data, or types that pickle and unpickle everywhere."
    )
    return State.failed(error)


def cloudpickle_dumps(obj: Any, buffers: list[Any] | None = None) -> bytes:
    """`cloudpickle.dumps`, keeping the source file names of functions sent by value.

    cloudpickle replaces them with ``<dynamic-code>``; kept, a traceback from a worker
    shows where the task's code is, and its source lines. `buffers`: as for `dumps`.
    """
    global _pickler
    if _pickler is None:
        _pickler = _filename_keeping_pickler()
    if buffers is not None:
        return _dump_out_of_band(_pickler, obj, buffers)
    import io

    buffer = io.BytesIO()
    _pickler(buffer, protocol=PROTOCOL).dump(obj)
    return buffer.getvalue()


def _filename_keeping_pickler() -> Any:
    import collections
    import types

    import cloudpickle

    code_reduce = getattr(getattr(cloudpickle, "cloudpickle", None), "_code_reduce", None)
    if code_reduce is None:
        return cloudpickle.Pickler

    def reduce_code(code: types.CodeType) -> Any:
        rebuild, args = code_reduce(code)
        return rebuild, tuple(
            code.co_filename if type(arg) is str and arg == "<dynamic-code>" else arg
            for arg in args
        )

    class Pickler(cloudpickle.Pickler):  # type: ignore[misc]
        dispatch_table = collections.ChainMap(
            {types.CodeType: reduce_code}, cloudpickle.Pickler.dispatch_table
        )

    return Pickler


# -- exceptions ---------------------------------------------------------------------------


def _text_of(error: BaseException) -> str:
    try:
        return str(error)
    except Exception:
        return f"<{type(error).__name__} whose str() raised>"


def portable_state(state: State) -> State:
    """`state`, or, when its error would not survive the trip (it cannot be pickled, or
    not rebuilt from its pickle, or printing it raises), the same state with a
    `RemoteTaskError` that keeps the error's type name, message and traceback text."""
    if state.type is StateType.COMPLETED:
        return state
    error = state.error
    if error is None:
        return state
    try:
        _text = str(error)
        pickle.loads(cloudpickle_dumps(error))
        return state
    except Exception:
        pass
    trace = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    stand_in = RemoteTaskError(type(error).__qualname__, _text_of(error), trace)
    message = state.message
    return State(state.type, state.name, message, data=stand_in)


# -- arguments ----------------------------------------------------------------------------


def unpicklable_arguments(
    run: TaskRun,
    exc: BaseException,
    destination: str,
    advice: str = "",
    args: tuple[Any, ...] | None = None,
    kwargs: dict[str, Any] | None = None,
) -> pickle.PicklingError:
    """The error for a run whose arguments could not be pickled to go to `destination`
    ("a worker process", "a Dask worker"): it names the first argument that cannot be
    pickled, found by pickling each alone, and ends with `advice`.

    `args` and `kwargs` are what was being sent, when not the run's own (a native
    call's, with upstream placeholders).
    """
    task = run.task
    args = run.args if args is None else args
    kwargs = run.kwargs if kwargs is None else kwargs
    advice = advice or (
        "Arguments travel to the runner's workers pickled (with cloudpickle): pass "
        "something picklable instead (a path rather than an open file, settings rather "
        "than a client, lock or connection), create the object inside the task, or run "
        "this task on the 'thread' runner."
    )
    for label, value in _labelled_arguments(task, args, kwargs):
        try:
            cloudpickle_dumps(value)
        except Exception as inner:
            return pickle.PicklingError(
                f"Cannot send task run {run.name!r} to {destination}: argument {label!r} "
                f"of task {task.name!r} cannot be pickled ({_brief(inner)}). " + advice
            )
    return pickle.PicklingError(
        f"Cannot send task run {run.name!r} to {destination}: the arguments of task "
        f"{task.name!r} cannot be pickled ({_brief(exc)}). " + advice
    )


def _brief(exc: BaseException) -> str:
    """An error's type and the first line of its text, cut short: some pickling errors
    carry the repr of a whole task graph."""
    lines = _text_of(exc).strip().splitlines()
    text = lines[0] if lines else ""
    if len(text) > 200:
        text = text[:200] + "..."
    return f"{type(exc).__name__}: {text}"


def _labelled_arguments(
    task: Task[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> list[tuple[str, Any]]:
    try:
        signature = inspect.signature(task.fn)
        bound = signature.bind(*args, **kwargs).arguments
    except (TypeError, ValueError):
        return [(f"#{i}", a) for i, a in enumerate(args)] + list(kwargs.items())
    labelled: list[tuple[str, Any]] = []
    for name, value in bound.items():
        kind = signature.parameters[name].kind
        if kind is inspect.Parameter.VAR_POSITIONAL:
            labelled.extend((f"{name}[{i}]", item) for i, item in enumerate(value))
        elif kind is inspect.Parameter.VAR_KEYWORD:
            labelled.extend(value.items())
        else:
            labelled.append((name, value))
    return labelled
