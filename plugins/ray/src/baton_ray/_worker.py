"""What runs on the Ray workers: the remote functions that execute task runs.

Each remote function takes the run (its task by key, and the task itself pickled, for
a worker that has not loaded it yet; its id, name and arguments with placeholders
from `TaskRun.native_call()`) and two positional arguments per upstream run: its
final State and None, or ``(STORED,)`` and the ObjectRef of its value, which Ray
resolves to the value on the worker (it resolves only top-level ObjectRefs). It
returns two objects, the value first and then the outcome, so that a value that
cannot be pickled fails both, and the driver, which fetches only the small outcome,
sees the failure.

An outcome is a small tuple: ``(INLINE, value)`` for a completed run with a small
result, which travels in it; ``(STORED,)`` for a completed run whose value stays in
the object store, where downstream runs read it; ``(FINAL, state, traceback)`` for a
run that did not complete; ``(RETRY, state, delay, traceback)`` for an attempt to
retry after `delay` seconds.

`run_whole` runs the engine once, retries and hooks included: the run cannot be
retried by the driver (no retries, no timeout), so its two ObjectRefs are final
and downstream runs are given them at once. `run_attempt` runs one attempt and
says whether to retry, and after how long; the driver retries (also after a
crash). `run_timed_attempt` does the same as a streaming generator whose first
item says the attempt started, so that the driver can time the attempt and stop
it (``ray.cancel(force=True)``) when it runs past its timeout.
"""

from __future__ import annotations

import logging
import pickle
import threading
import time
import traceback
from collections.abc import Callable, Coroutine, Iterator
from typing import TYPE_CHECKING, Any, Final, cast, final

import ray
from baton import State, StateType
from baton._engine import (
    NativeCall,
    _final_state,
    _retry_delay,
    _run_hooks,
    run_async,
    run_sync,
)
from baton._runners._worker import RemoteTaskError

if TYPE_CHECKING:
    from baton._scope import RunScope
    from baton._task import Task

    from baton_ray._runner import RayTaskRunner

__all__ = [
    "FINAL",
    "INLINE",
    "RETRY",
    "STARTED",
    "STORED",
    "Head",
    "run_attempt",
    "run_timed_attempt",
    "run_whole",
]

logger = logging.getLogger("baton")

INLINE, STORED, FINAL, RETRY = 0, 1, 2, 3
STARTED: Final = "started"

# (task key, pickled task or [its ObjectRef], run id, run name, args, kwargs, wait_for)
Head = tuple[str, Any, int, str, tuple[Any, ...], dict[str, Any], tuple[Any, ...]]

# Results of these types and sizes travel inside the outcome instead of the store.
_INLINE_TYPES: Final = frozenset({int, float, bool, complex, type(None)})
_INLINE_SIZE: Final = 512


# -- the remote functions ---------------------------------------------------------------


@ray.remote(num_returns=2, max_retries=0)
def run_whole(head: Head | bytes, *inputs: Any) -> tuple[Any, tuple[Any, ...]]:
    call = _load(head)
    if type(call) is State:
        return None, _outcome(call)
    return _split(_execute(call, inputs, None))


@ray.remote(num_returns=2, max_retries=0)
def run_attempt(head: Head | bytes, attempt: int, *inputs: Any) -> tuple[Any, tuple[Any, ...]]:
    call = _load(head)
    if type(call) is State:
        return None, _outcome(call)
    state = _execute(call, inputs, attempt)
    return _split(state, _decide(call, state, attempt))


@ray.remote(num_returns="streaming", max_retries=0)
def run_timed_attempt(head: Head | bytes, attempt: int, *inputs: Any) -> Iterator[Any]:
    yield STARTED
    call = _load(head)
    if type(call) is State:
        yield None
        yield _outcome(call)
        return
    state = _execute(call, inputs, attempt)
    value, outcome = _split(state, _decide(call, state, attempt))
    yield value
    yield outcome


# -- loading a run --------------------------------------------------------------------------

_tasks: dict[str, Task[..., Any]] = {}
_tasks_lock = threading.Lock()


def _load(head: Head | bytes) -> NativeCall | State:
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
    key, blob, run_id, name, args, kwargs, wait_for = head
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
    return NativeCall(task, run_id, name, args, kwargs, wait_for)


def _upstream_states(inputs: tuple[Any, ...]) -> tuple[State, ...]:
    """One final State per upstream, from its (State, None) or (STORED, value) pair."""
    states = []
    for index in range(0, len(inputs), 2):
        head = inputs[index]
        states.append(head if type(head) is State else State.completed(inputs[index + 1]))
    return tuple(states)


class _Attempt:
    """The run as the engine sees it for one attempt: its task without retries or hooks,
    which the caller applies itself."""

    __slots__ = ("id", "name", "task")

    def __init__(self, call: NativeCall) -> None:
        self.id = call.id
        self.name = call.name
        self.task = _one_attempt(call.task)


_single: dict[int, tuple[Task[..., Any], Task[..., Any]]] = {}


def _one_attempt(task: Task[..., Any]) -> Task[..., Any]:
    cached = _single.get(id(task))
    if cached is not None and cached[0] is task:
        return cached[1]
    single = task.with_options(retries=0, on_completion=(), on_failure=())
    if len(_single) > 256:
        _single.clear()
    _single[id(task)] = (task, single)
    return single


def _execute(call: NativeCall, inputs: tuple[Any, ...], attempt: int | None) -> State:
    """Run the call: the whole run (`attempt` None), or that one attempt."""
    args, kwargs = call.args, call.kwargs
    if inputs:
        filled = call.fill(_upstream_states(inputs))
        if isinstance(filled, State):
            return filled
        args, kwargs = filled
    info: Any = call if attempt is None else _Attempt(call)
    scope = _nested_scope(call.name)
    token = scope.enter()
    try:
        if call.task.is_async:
            state = _run_coroutine(run_async(info, args, kwargs, enforce_timeout=attempt is None))
        else:
            state = run_sync(info, args, kwargs, enforce_timeout=attempt is None)
    except BaseException as exc:
        # The engine lets a KeyboardInterrupt in a main thread go on, as Ctrl-C; here the
        # task raised it (or SystemExit): it crashes the run, as on every runner.
        state = _final_state(exc, call)
    finally:
        scope.exit(token)
    _finish_nested(scope, call.name)
    return state


def _run_coroutine(coroutine: Coroutine[Any, Any, State]) -> State:
    """Run an async task's engine on an event loop in a helper thread, while this, the
    worker's main thread, waits inside ``ray.wait`` whenever runs the task submitted are
    in Ray: an async task that awaits nested runs lends its CPU to them, as a sync one
    that blocks on them does."""
    import asyncio
    import contextvars

    done = threading.Event()
    outcome: list[Any] = []
    context = contextvars.copy_context()

    def loop() -> None:
        try:
            outcome.append(context.run(asyncio.run, coroutine))
        except BaseException as exc:  # reported in the main thread
            outcome.append(exc)
        finally:
            done.set()

    thread = threading.Thread(target=loop, name="baton-ray-async", daemon=True)
    thread.start()
    waits = _waits()
    if waits is None:
        done.wait()
    else:
        waits.wait(done.is_set, None, done)
    thread.join()
    result = outcome[0]
    if isinstance(result, BaseException):
        raise result
    state: State = result
    return state


def _waits() -> _RayWaits | None:
    from baton._futures import _worker

    pool = getattr(_worker, "pool", None)
    return pool if isinstance(pool, _RayWaits) else None


def _decide(call: NativeCall, state: State, attempt: int) -> float | None:
    """After one attempt: seconds until the next, or None when `state` is final (whose
    hooks then run here, as the engine runs them)."""
    if state.type is not StateType.COMPLETED:
        delay = _retry_delay(call, state, attempt)
        if delay is not None:
            return delay
    options = call.task.options
    if options.on_completion or options.on_failure:
        _run_hooks(call, state)
    return None


def _split(state: State, retry_in: float | None = None) -> tuple[Any, tuple[Any, ...]]:
    """(value, outcome) to return: the value stays in the store unless it is small."""
    if state.type is StateType.COMPLETED:
        value = state.result()
        kind = type(value)
        if kind in _INLINE_TYPES or ((kind is str or kind is bytes) and len(value) <= _INLINE_SIZE):
            return None, (INLINE, value)
        return value, (STORED,)
    return None, _outcome(state, retry_in)


def _outcome(state: State, retry_in: float | None = None) -> tuple[Any, ...]:
    """The outcome of a run or attempt that did not complete, with an error that travels."""
    error = state.error
    tb = None
    if error is not None:
        tb = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        try:
            ray.cloudpickle.dumps(error)  # type: ignore[no-untyped-call]
        except Exception:
            try:
                text = str(error)
            except Exception:
                text = f"<{type(error).__name__} whose str() raised>"
            stand_in = RemoteTaskError(type(error).__qualname__, text, tb)
            state = State(state.type, state.name, state.message, data=stand_in)
    if retry_in is None:
        return (FINAL, state, tb)
    return (RETRY, state, retry_in, tb)


# -- nested runs --------------------------------------------------------------------------

_runner_lock = threading.Lock()
_worker_runner: RayTaskRunner | None = None


_spare_scope: RunScope | None = None


def _nested_scope(name: str) -> RunScope:
    """A scope for the runs this task run submits: they go to this Ray cluster, on a
    runner that uses the worker's connection to it."""
    global _worker_runner, _spare_scope
    from baton._scope import RunScope

    scope = _spare_scope
    if scope is not None:
        # The last task run submitted nothing: its scope is as good as new.
        _spare_scope = None
        scope.label = f"runs submitted inside task run {name!r}"
        return scope
    runner = _worker_runner
    if runner is None:
        with _runner_lock:
            runner = _worker_runner
            if runner is None:
                from baton._futures import _worker

                from baton_ray._runner import RayTaskRunner

                runner = RayTaskRunner().start()
                _worker_runner = runner
                # Tasks run in the worker's main thread: waits for runs there go
                # through ray.wait, during which Ray lends this worker's CPU to others.
                _worker.pool = _RayWaits(runner)
    return RunScope(runner, f"runs submitted inside task run {name!r}")


def _finish_nested(scope: RunScope, name: str) -> None:
    """A task run ends once the runs it submitted have: it waits for them, as a flow
    does, and reports those that failed unhandled."""
    global _spare_scope
    if scope.pending_count() == 0 and not scope._lazy_maps and not scope._unobserved:
        _spare_scope = scope
        return
    from baton._futures import _worker

    scope.drain_lazy_maps()
    pool = getattr(_worker, "pool", None)
    if pool is not None:
        pool.wait(lambda: scope.pending_count() == 0, None)
    scope.wait_all()
    for future in scope.unobserved_failures():
        logger.error(
            "Task run %r (submitted by task run %r on a Ray worker) failed and nothing "
            "handled it: %r",
            future.name,
            name,
            future.state,
        )


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
