"""What runs on the Ray workers: the remote functions that execute task runs.

Each remote function takes the run's head (its task by key, and the task itself
pickled, for a worker that has not loaded it yet; its id, name and arguments with
placeholders from `TaskRun.native_call()`) and, for a run with upstream runs, their
final States in one argument, then a pair of arguments, ``(STORED,)`` and the ObjectRef
of its value, for each upstream whose value is in the store: Ray resolves them on the
worker (it
resolves only top-level ObjectRefs; see `_upstream_values`). It
runs the call with `baton.runners.run_call` and returns two objects, the value first
and then the outcome, so that a value that cannot be pickled fails both, and the
driver, which fetches only the small outcome, sees the failure.

An outcome is a small tuple: ``(INLINE, value, unhandled, worker)`` for a completed run
with a small result, which travels in it; ``(STORED, unhandled, worker)`` for a completed
run whose value stays in the object store, where downstream runs read it;
``(FINAL, result, worker)`` for a run that did not complete, and
``(RETRY, result, worker)`` for an attempt to retry (`result` is the `RemoteResult`,
made portable; `worker` names the worker that ran it, for `TaskRun.worker`).
`unhandled` holds the runs the task submitted that failed with nothing handling them,
which `TaskRun.finish` reports to the flow. The value returned beside it is the run's
value (also a small one, for downstream runs given its ObjectRef), or `Ended` with the
final state of a run that did not complete.

`run_whole` makes every attempt here, hooks included: the run cannot be retried by
the driver (no retries, no timeout), so its two ObjectRefs are final and downstream
runs are given them at once. `run_attempt` makes one attempt and says whether to
retry, and after how long; the driver retries (also after a crash).
`run_timed_attempt` does the same as a streaming generator whose first item says the
attempt started, so that the driver can time the attempt and stop it
(``ray.cancel(force=True)``) when it runs past its timeout.
"""

from __future__ import annotations

import os
import pickle
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Final, Literal, cast, final

import ray
from baton import State, StateType
from baton.runners import (
    NestedFailure,
    RemoteResult,
    RunCall,
    lend_slot,
    rebuild_problem,
    run_batch,
    run_call,
    unrebuildable_result,
)

if TYPE_CHECKING:
    from baton import Task

    from baton_ray._runner import RayTaskRunner

__all__ = [
    "FINAL",
    "INLINE",
    "RETRY",
    "STARTED",
    "STORED",
    "Head",
    "run_attempt",
    "run_batch_remote",
    "run_timed_attempt",
    "run_whole",
]

INLINE, STORED, FINAL, RETRY = 0, 1, 2, 3
STARTED: Final = "started"

# (task key, pickled task or [its ObjectRef], run id, run name, args, kwargs, wait_for,
# the call's RunLimits or None), and the run's OpenTelemetry trace context
# (`RunCall.trace_context`) when it has one
Head = tuple[Any, ...]

# Results of these types and sizes travel inside the outcome instead of the store.
_INLINE_TYPES: Final = frozenset({int, float, bool, complex, type(None)})
_INLINE_SIZE: Final = 512


# -- the remote functions ---------------------------------------------------------------


@ray.remote(num_returns=2, max_retries=0)
def run_whole(head: Head | bytes, *inputs: Any) -> tuple[Any, tuple[Any, ...]]:
    call = _load(head)
    if type(call) is State:
        return None, _outcome(RemoteResult(call))
    return _split(call, _execute(call, inputs, 1, "here"))


@ray.remote(num_returns=2, max_retries=0)
def run_attempt(head: Head | bytes, attempt: int, *inputs: Any) -> tuple[Any, tuple[Any, ...]]:
    call = _load(head)
    if type(call) is State:
        return None, _outcome(RemoteResult(call, attempt=attempt))
    return _split(call, _execute(call, inputs, attempt, "runner"))


@ray.remote(num_returns="streaming", max_retries=0)
def run_timed_attempt(head: Head | bytes, attempt: int, *inputs: Any) -> Iterator[Any]:
    yield STARTED
    call = _load(head)
    if type(call) is State:
        yield None
        yield _outcome(RemoteResult(call, attempt=attempt))
        return
    value, outcome = _split(call, _execute(call, inputs, attempt, "runner"))
    yield value
    yield outcome


@ray.remote(max_retries=0)
def run_batch_remote(
    heads: list[Head | bytes],
    attempts: list[int],
    retries: Literal["here", "runner"],
    counts: list[int],
    *inputs: Any,
) -> tuple[Any, ...]:
    """A batch of runs, each run as it would be alone (`run_batch`). Returns one value per
    run (kept in the store, as `_split` decides; else None), then ``(outcomes, seconds)``:
    per run, its outcome and how long it took. `counts` says how many of `inputs` are
    each run's (see `_upstream_values`); an upstream given as an int is the run of this
    batch at that index, an earlier one (a chain sent together): its value, or its final
    state, as a Ray task of its own would have passed it on."""
    calls = [_load(head) for head in heads]
    values: list[Any] = [None] * len(calls)
    outcomes: list[Any] = [None] * len(calls)
    seconds: list[float] = []
    passed: list[State] = []  # per run, what a downstream run of the batch is given
    start = 0
    waits = _nested()
    with lend_slot(waits):
        for i, (call, count) in enumerate(zip(calls, counts, strict=True)):
            end = start + count
            upstreams = _upstream_values(inputs[start:end], passed) if count else ()
            start = end
            if type(call) is State:
                outcomes[i] = _outcome(RemoteResult(call, attempt=attempts[i]))
                passed.append(call)
                continue
            run = call
            ((result, took),) = run_batch(
                [run], [upstreams], attempts=[attempts[i]], retries=retries, nested=waits.runner
            )
            value, outcomes[i] = _split(run, result)
            values[i] = value
            seconds.append(took)
            passed.append(value.state if type(value) is Ended else State.completed(value))
    return (*values, (outcomes, seconds))


# -- loading a run --------------------------------------------------------------------------

_tasks: dict[str, Task[..., Any]] = {}
_tasks_lock = threading.Lock()


def _load(head: Head | bytes) -> RunCall | State:
    """The run to execute, or the FAILED state saying why its task cannot be loaded."""
    if isinstance(head, bytes):
        try:
            head = cast(Head, pickle.loads(head))
        except BaseException as exc:
            return State.failed(
                RuntimeError(
                    "A task run could not start: its arguments could not be loaded on its "
                    f"Ray worker: {type(exc).__name__}: {exc}"
                )
            )
    key, blob, run_id, name, args, kwargs, wait_for, limits = head[:8]
    trace_context = head[8] if len(head) > 8 else None
    task = _tasks.get(key)
    if task is None:
        try:
            if isinstance(blob, list):
                blob = ray.get(blob[0])
            task = pickle.loads(blob)
        except BaseException as exc:
            module = getattr(exc, "name", None)
            hint = (
                f" The worker imports module {module!r} by name: install it on the workers, "
                "or ship it with the runtime_env (py_modules, working_dir)."
                if isinstance(exc, ImportError) and module
                else ""
            )
            error = RuntimeError(
                f"Task run {name!r} could not start: its task could not be loaded on its Ray "
                f"worker: {type(exc).__name__}: {exc}.{hint}"
            )
            return State.failed(error)
        with _tasks_lock:
            if len(_tasks) >= 512:
                _tasks.clear()
            _tasks[key] = task
    return RunCall(task, run_id, name, args, kwargs, wait_for, trace_context, limits)


def _upstream_values(
    inputs: tuple[Any, ...], earlier: list[State] | None = None
) -> tuple[State, ...]:
    """One final State per upstream. `inputs` starts with one entry per upstream: its
    final State, or None for one given as a pair of arguments that follow, in order:
    ``(STORED,)`` and its value, from the ObjectRef that Ray resolved here (`Ended`
    there holds the state of an upstream that did not complete), or the index in
    `earlier` of an upstream that ran before it in the same batch."""
    states = []
    pairs = 1
    for ended in inputs[0]:
        if type(ended) is int:
            assert earlier is not None
            states.append(earlier[ended])
            continue
        if ended is not None:
            states.append(ended)
            continue
        head, value = inputs[pairs], inputs[pairs + 1]
        pairs += 2
        del head
        states.append(value.state if type(value) is Ended else State.completed(value))
    return tuple(states)


def _execute(
    call: RunCall, inputs: tuple[Any, ...], attempt: int, retries: Literal["here", "runner"]
) -> RemoteResult:
    """Run the call here: the runs it submits go to this Ray cluster, and while it waits
    for them this worker waits inside ``ray.wait``, lending its CPU to them."""
    waits = _nested()
    runner = waits.runner
    with lend_slot(waits):
        return run_call(
            call,
            _upstream_values(inputs) if inputs else (),
            attempt=attempt,
            retries=retries,
            timeout="engine" if retries == "here" else "runner",
            nested=runner,
        )


def _split(call: RunCall, result: RemoteResult) -> tuple[Any, tuple[Any, ...]]:
    """(value, outcome) to return: the value stays in the store unless it is small."""
    state = result.state
    if state.type is StateType.COMPLETED and result.retry is None:
        unhandled = _portable(result.unhandled)
        value = state.result()
        kind = type(value)
        if kind in _INLINE_TYPES or ((kind is str or kind is bytes) and len(value) <= _INLINE_SIZE):
            return value, (INLINE, value, unhandled, _where())
        # Found here, so that the run fails rather than completing with a result that
        # nobody can read: the driver reads a stored value only when asked to.
        problem = rebuild_problem(value)
        if problem:
            failed = unrebuildable_result(call.task.name, call.name, problem)
            result = RemoteResult(failed, None, result.unhandled, result.attempt)
            return Ended(failed), _outcome(result)
        return value, (STORED, unhandled, _where())
    outcome = _outcome(result)
    return Ended(outcome[1].state), outcome


@final
class Ended:
    """In place of the value of a run that did not complete: a downstream run that Ray
    handed the value's ObjectRef finds the run's final state in it."""

    __slots__ = ("state",)

    def __init__(self, state: State) -> None:
        self.state = state

    def __reduce__(self) -> tuple[Any, ...]:
        return (Ended, (self.state,))


_worker_name: str | None = None


def _where() -> str:
    """This worker, as `TaskRun.worker` names it: ``"node <8 hex digits> pid N"``."""
    global _worker_name
    name = _worker_name
    if name is None:
        try:
            node = ray.get_runtime_context().get_node_id()[:8]
        except Exception:  # not in a Ray worker (a test calling the function directly)
            node = "?"
        name = _worker_name = f"node {node} pid {os.getpid()}"
    return name


def _portable(unhandled: tuple[NestedFailure, ...]) -> tuple[NestedFailure, ...]:
    if not unhandled:
        return unhandled
    return RemoteResult(State.completed(), unhandled=unhandled).portable().unhandled


def _outcome(result: RemoteResult) -> tuple[Any, ...]:
    """The outcome of a run or attempt that did not complete, with errors that travel."""
    return (FINAL if result.retry is None else RETRY, result.portable(), _where())


# -- nested runs --------------------------------------------------------------------------

_runner_lock = threading.Lock()
_worker_waits: _RayWaits | None = None


def _nested() -> _RayWaits:
    """The waits of this worker, with the runner for the runs its task runs submit: they
    go to this Ray cluster, through the worker's own connection to it."""
    global _worker_waits
    waits = _worker_waits
    if waits is None:
        with _runner_lock:
            waits = _worker_waits
            if waits is None:
                from baton_ray._runner import RayTaskRunner

                waits = _worker_waits = _RayWaits(RayTaskRunner().start())
    return waits


@final
class _RayWaits:
    """The waits of a Ray worker's main thread for runs: inside ``ray.wait`` on the runs
    this worker submitted, so that Ray lends the worker's CPU to other tasks (the
    runs waited for among them) meanwhile."""

    __slots__ = ("runner",)

    def __init__(self, runner: RayTaskRunner) -> None:
        self.runner = runner

    def secede(self) -> None:
        """Nothing to do: Ray lends the CPU only inside its own waits (see `wait`)."""

    def rejoin(self) -> None:
        """Nothing to do (see `secede`)."""

    def wait(
        self,
        ready: Callable[[], bool],
        timeout: float | None,
        event: threading.Event | None = None,
    ) -> bool:
        """Block until `ready()` or `timeout` seconds pass; `event`, if given, is set
        when `ready()` turns true."""
        deadline = None if timeout is None else time.monotonic() + timeout
        seen: set[Any] = set()
        pause = 0.001
        while not ready():
            remaining = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
            if remaining <= 0:
                return False
            refs = [ref for ref in self.runner._waitables() if ref not in seen]
            if refs:
                done, _ = ray.wait(refs, num_returns=1, timeout=remaining, fetch_local=False)
                seen.update(done)
                pause = 0.001
            else:
                # Reports of finished runs are on their way, or a retry waits for its
                # delay: nothing in Ray to wait in.
                if event is not None:
                    event.wait(min(pause, remaining))
                else:
                    time.sleep(min(pause, remaining))
                pause = min(pause * 2, 0.02)
        return True
