"""What runs on a Dask worker: the task that executes one run's engine call.

Each run is one Dask task, `run_task(call, inputs, attempt)`. Its inputs are the
results of upstream runs (Dask puts them in, worker to worker) or, for upstream
runs the driver waited for, their final States. It returns the run's plain result
when the run completed, so that downstream tasks receive it as any Dask result;
otherwise it raises `RunEnded`, which carries the small final State. Dask then
errs every downstream task without running it, and the driver learns each run's
outcome from the status of its Dask future, without fetching any result.

While the engine runs, the worker thread lends its slot to Dask whenever the task
blocks on other runs (`secede`/`rejoin`), and task runs submitted by the task go to
the same cluster through the worker's own client.
"""

from __future__ import annotations

import pickle
import threading
from typing import TYPE_CHECKING, Any, final

from baton import State, StateType
from baton._runners._worker import _describe_failure

if TYPE_CHECKING:
    from baton._engine import NativeCall

    from baton_dask._runner import DaskTaskRunner

__all__ = ["LARGE_RESULT_BYTES", "Large", "RunEnded", "run_task"]

LARGE_RESULT_BYTES = 16 * 1024
"""Results that pickle to more than this stay on the cluster, wrapped in `Large`, until
read one by one; smaller ones may be fetched together with others of the same task."""

_PLAIN = frozenset({int, float, bool, type(None), complex})


@final
class Large:
    """A result too large to fetch along with others: the driver sees the wrapper's type in
    the Dask future's `type` and fetches such results only when they are read."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __reduce__(self) -> tuple[Any, ...]:
        return (Large, (self.value,))


def unwrap(value: Any) -> Any:
    """A result as the driver reads it."""
    return value.value if type(value) is Large else value


def as_input(value: Any) -> Any:
    """An upstream's value as the engine takes it: a plain State stands for the outcome of
    an upstream the driver waited for; a State that a task returned is its result."""
    if type(value) is Large:
        value = value.value
        if isinstance(value, State):
            return State.completed(value)
    return value


class RunEnded(Exception):
    """Ends the Dask task of a run that did not complete; carries the run's final State.

    The State travels pickled, with a plain description of its error beside it, so
    that the driver can rebuild the failure even if the error's class cannot be
    imported there. Dask hands this same exception to every downstream task, which
    is how the driver tells a run that failed from one whose upstream failed.
    """

    def __init__(
        self,
        run_id: int,
        run_name: str,
        blob: bytes,
        failure: tuple[str, str, str | None, str, str, str],
    ) -> None:
        super().__init__(run_id, run_name, blob, failure)
        self.run_id = run_id
        self.run_name = run_name
        self.blob = blob
        self.failure = failure

    def __repr__(self) -> str:
        return f"RunEnded({str(self)!r})"

    def __str__(self) -> str:
        # Short: Dask replaces exceptions with long messages by plain ones.
        kind, name, message = self.failure[:3]
        text = (message or "")[:300]
        return f"Task run {self.run_name!r} ended {name or kind}" + (f": {text}" if text else "")


# -- the task --------------------------------------------------------------------------


def run_task(call: NativeCall, inputs: list[Any], attempt: int = 1) -> Any:
    """The Dask task of one run: run the engine, return the result or raise `RunEnded`."""
    from baton import _futures
    from baton._scope import RunScope

    local = _futures._worker
    previous = getattr(local, "pool", None)
    local.pool = _SECESSION
    scope = RunScope(_worker_runner(), f"task run {call.name!r} on a Dask worker")
    token = scope.enter()
    try:
        values = [as_input(v) for v in inputs] if inputs else ()
        # A run sent again after its worker died continues its count of attempts.
        state = call(*values, first_attempt=attempt)
        del values
        if scope.pending_count() or scope._lazy_maps:
            state = _after_nested(call, scope, state)
    finally:
        scope.exit(token)
        local.pool = previous
    if state.type is StateType.COMPLETED:
        value = state.result()
        del state
        size = _pickled_size(value)
        if isinstance(size, int):
            # A State as a result is wrapped too, so that it cannot pass for an outcome.
            large = size > LARGE_RESULT_BYTES or isinstance(value, State)
            return Large(value) if large else value
        state = State.failed(
            pickle.PicklingError(
                f"Task run {call.name!r} (task {call.task.name!r}) returned a value that "
                f"cannot be pickled ({size}), so it cannot travel from its Dask worker. Return "
                "something picklable (plain data, or a path to where the value was written)."
            )
        )
    raise ended(call.id, call.name, state)


def _after_nested(call: NativeCall, scope: Any, state: State) -> State:
    """Wait for the runs the task submitted and left running; fail a run that returned
    while some of them failed unhandled, as a flow would."""
    from baton import BatonError
    from baton._futures import blocking_section

    with blocking_section():
        scope.drain_lazy_maps()
        scope.wait_all()
    unhandled = scope.unobserved_failures()
    if not unhandled or not state.is_completed():
        return state
    error = BatonError(
        f"Task run {call.name!r} returned, but {len(unhandled)} task run(s) it submitted "
        f"failed and nothing in the task handled them: {scope.name_runs(unhandled)}. Call "
        ".result(), read .state or use wait() on their futures inside the task."
    )
    error.__cause__ = unhandled[0]._state.error
    return State.failed(error)


# -- results and failures that travel -----------------------------------------------------


class _Discard:
    """A file that counts what is written to it and keeps nothing."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0

    def write(self, data: Any) -> int:
        size = memoryview(data).nbytes
        self.count += size
        return size


def _pickled_size(value: Any) -> int | str:
    """How many bytes `value` pickles to, found by pickling it to nowhere (large buffers
    are passed by reference, not copied); or why it cannot be pickled."""
    if type(value) in _PLAIN:
        return 0
    sink = _Discard()
    buffers = 0

    def out_of_band(buffer: pickle.PickleBuffer) -> None:
        nonlocal buffers
        buffers += memoryview(buffer).nbytes

    try:
        pickle.Pickler(sink, 5, buffer_callback=out_of_band).dump(value)
        return sink.count + buffers
    except Exception:
        pass
    import cloudpickle  # type: ignore[import-untyped]

    sink, buffers = _Discard(), 0
    try:
        cloudpickle.Pickler(sink, 5, buffer_callback=out_of_band).dump(value)
        return sink.count + buffers
    except Exception as exc:
        problem = f"{type(exc).__name__}: {exc}"
    try:  # types that Dask serializes by its own means
        from distributed.protocol.serialize import serialize

        _, frames = serialize(value, on_error="raise")
        return sum(memoryview(f).nbytes for f in frames)
    except Exception:
        return problem


def ended(run_id: int, run_name: str, state: State) -> RunEnded:
    failure = _describe_failure(state)
    error = state.error
    if error is not None:
        # As Dask does for the errors of its own tasks: the error's causes and traceback
        # travel along with it.
        try:
            from tblib import pickling_support  # type: ignore[import-untyped]

            pickling_support.install(error)
        except Exception:
            pass
    try:
        blob = pickle.dumps(state, 5)
    except Exception:
        try:
            from baton._runners._worker import cloudpickle_dumps

            blob = cloudpickle_dumps(state)
        except Exception:
            blob = b""
    return RunEnded(run_id, run_name, blob, failure)


def decode(error: RunEnded) -> State:
    """The State a `RunEnded` carries, rebuilt in the driver."""
    from baton._runners._worker import RemoteTaskError, RemoteTraceback

    kind, name, message, type_name, text, tb = error.failure
    state: State | None = None
    if error.blob:
        try:
            state = pickle.loads(error.blob)
        except Exception:
            state = None
    if state is None:
        remote = RemoteTaskError(type_name or kind, text, tb)
        if tb:
            remote.__cause__ = RemoteTraceback(tb)
        return State(StateType(kind), name, message, data=remote)
    found = state.error
    if tb and found is not None and found.__cause__ is None and found.__traceback__ is None:
        found.__cause__ = RemoteTraceback(tb)
    return state


# -- waiting inside a task ----------------------------------------------------------------


@final
class _Secession:
    """Set as the blocking pool of a worker thread while a run executes there: a task
    that blocks on other runs leaves Dask's thread pool (`distributed.secede`) until the
    wait ends (`distributed.rejoin`), so Dask can run those runs on its slot. Without
    this, a cluster of one worker thread would deadlock on a task that maps others."""

    __slots__ = ("_local",)

    def __init__(self) -> None:
        self._local = threading.local()

    def secede(self) -> None:
        local = self._local
        depth = getattr(local, "depth", 0)
        local.depth = depth + 1
        if depth:
            return
        import distributed
        from distributed.threadpoolexecutor import thread_state

        # The task may have left the pool itself (worker_client, secede()) already.
        local.seceded = bool(getattr(thread_state, "proceed", False))
        if local.seceded:
            secede: Any = distributed.secede
            secede()

    def rejoin(self) -> None:
        local = self._local
        local.depth -= 1
        if local.depth == 0 and local.seceded:
            local.seceded = False
            import distributed

            rejoin: Any = distributed.rejoin
            rejoin()


_SECESSION = _Secession()

# -- the runner of runs submitted on a worker ---------------------------------------------

_runners: dict[str, DaskTaskRunner] = {}
_runners_lock = threading.Lock()


def _worker_runner() -> DaskTaskRunner:
    """The runner that sends runs submitted by tasks on this worker to the same cluster.

    One per worker, created on first use, never shut down: it holds no resources
    of its own, and connects (with `distributed.get_client`) only when a task
    submits something.
    """
    from distributed import get_worker

    address = get_worker().address
    runner = _runners.get(address)
    if runner is None:
        with _runners_lock:
            runner = _runners.get(address)
            if runner is None:
                from baton_dask._runner import DaskTaskRunner

                runner = _runners[address] = DaskTaskRunner._on_worker()
    return runner
