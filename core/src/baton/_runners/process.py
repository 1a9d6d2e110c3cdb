"""The `process` runner: task runs in a pool of worker processes.

For CPU-bound Python code, which threads cannot run in parallel. What it does:

- **Fresh workers.** Each worker is a new interpreter (``python -c``), never a fork
  of the flow's process, so it inherits no threads or locks, and it never imports
  the script's ``__main__``: a script without an ``if __name__ == "__main__":``
  guard works. Functions and arguments travel with cloudpickle, so tasks defined in
  ``__main__``, a notebook, an ``exec`` or a closure work; modules are imported by
  name in the worker, with the flow's ``sys.path`` (as it is when runs are sent),
  and ``sys.argv`` is the flow's. A module the worker cannot import gets a clear
  error; ``cloudpickle.register_pickle_by_value(module)`` sends it by value
  instead. The one case that needs the guard: a module imported in a worker that
  starts a `process` flow at import time; that is refused with an error that says
  so (it would start workers of workers without end).
- **Hard timeouts, per attempt.** A run's clock starts when its worker starts an
  attempt (retry delays do not count). When `timeout_seconds` passes, the worker is
  killed (with any process it started) and replaced, for sync and async tasks
  alike; the attempt ends ``TimedOut`` (`TaskTimeoutError`), retries apply (the
  worker's own retries count), and other runs carry on.
- **Crash detection.** A worker that dies mid-run (``os._exit``, a signal, a
  segfault) ends that run CRASHED, with the exit code or signal in the message.
  The run is retried per its `retries` and `retry_delay_seconds` (and
  `retry_condition_fn`); the pool replaces the worker and carries on.
- **Pickling errors are clear.** An argument that cannot be pickled raises at
  `.submit`/`.map` (or fails the run, when it waited for upstream runs), naming the
  task and the parameter. A result that cannot be pickled fails the run with an
  error that says so; an exception that cannot be pickled reaches the parent as
  `RemoteTaskError` with the original's type name, message and traceback. Every
  exception from a worker has the worker's traceback text as its ``__cause__``.
- **Async tasks** run on one event loop per worker, one run at a time per worker.
  For many concurrent async I/O tasks the `thread` runner is the better fit.
- **Nested tasks.** A task that submits or maps tasks runs them on a `thread`
  runner inside its worker (there is no flow in a worker).
- **Cancelling and Ctrl-C.** ``future.cancel()`` drops a queued run. Workers ignore
  Ctrl-C and run in their own session: the flow decides, cancelling what has not
  started and killing the workers, so no process is left behind. A worker also
  exits by itself if the flow's process dies.

- **Warm workers.** A runner that a flow run starts for itself (``"process"`` by
  name, from `get_runner`, or an unstarted instance given to ``@flow``) takes its
  workers from a warm pool kept between flow runs (see `_process_shared`): one
  pool per set of options that shape the workers, stopped after `idle_timeout`
  seconds unused and at interpreter exit. A runner started with ``with`` (or
  ``.start()``) has workers of its own, stopped at its shutdown.
- **Large data without copies.** NumPy arrays and other pickle-protocol-5 buffers,
  and large `bytes`, in results and arguments travel through shared memory, not
  the socket (see `_process_shm`).
- **Priorities and resources.** Runs waiting for a worker are sent by `priority`,
  higher first (runs already sent ahead to a busy worker, in batches when many
  wait, keep their place). `resources` declares capacities (``{"GPU": 2}``): a run
  of a task with ``resources={"GPU": 1}`` waits, PENDING ``AwaitingResources``,
  until one is free, and a request beyond them is an error at submit.

- **Batches of small runs** (see `_process_sending`). Runs waiting for a worker go
  to it several per message, sized with `baton.runners.BatchSizer` from how long
  the task's runs take, which the worker times and sends with each result: runs
  of a task not measured yet, and runs of 0.1 s or more, go one by one, each to an
  idle worker, so that long runs spread over every worker; tiny runs go up to 64
  per message, about 50 ms of work, two messages' worth per worker. Runs with a
  timeout go one at a time to an idle worker. The `batch_size` option (the
  task's own wins, see `batch_size_of`) turns batching off (1) or fixes the size.

Overhead per run is under twenty microseconds when many wait: a task is sent to
each worker once, then only its runs' arguments, in batches. Needs a POSIX system
(Linux, macOS).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, final

from baton import BatonError, InvalidOptionsError, RunnerClosedError
from baton._resources import ResourcePool, check_capacities
from baton._runners import _worker
from baton._runners._worker import WorkerLoadError
from baton.runners import (
    Capability,
    RemoteTaskError,
    TaskRunner,
    batch_size_problem,
    cloudpickle_dumps,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

    from baton import TaskRun
    from baton._runners._process_jobs import Session
    from baton._runners._process_pool import WorkerPool

__all__ = ["ProcessRunner", "RemoteTaskError", "WorkerLoadError"]


DEFAULT_IDLE_TIMEOUT = 300.0


def default_max_workers() -> int:
    return os.cpu_count() or 1


@final
class ProcessRunner(TaskRunner):
    """Runs task runs in a pool of worker processes: parallel Python, hard timeouts,
    and crash detection.

    `max_workers` defaults to the `BATON_PROCESS_MAX_WORKERS` setting, else the
    number of CPUs. `initializer(*initargs)` runs once in each worker as it starts
    (both are pickled with cloudpickle); if it raises, runs end CRASHED with its
    traceback. `resources` declares capacities for tasks' `resources` (``{"GPU": 2}``).
    `batch_size`: runs waiting for a worker go to it in batches sized from how long
    the task's runs take (None); 1 sends each run alone to an idle worker, n puts up
    to n runs in a batch. A task's own ``batch_size`` option wins.

    Started by a flow run (selected by name, or given unstarted to ``@flow``), it
    takes warm workers from the pool shared by the flow runs whose runner has the
    same options; `idle_timeout` is how many seconds that pool keeps its workers
    once no flow run uses it (None: until the interpreter exits). Used with
    ``with`` (or started with ``.start()``), it has workers of its own, which stop
    when it shuts down.

    >>> from baton import flow, task
    >>> @task
    ... def square(x):
    ...     return x * x
    >>> @flow(task_runner=ProcessRunner(max_workers=2))
    ... def squares(n):
    ...     return square.map(range(n)).result()
    >>> squares(4)
    [0, 1, 4, 9]
    """

    name = "process"
    capabilities = frozenset(
        {
            Capability.PROCESSES,
            Capability.NESTED,
            Capability.ASYNC,
            Capability.HARD_TIMEOUTS,
            Capability.CRASH_DETECTION,
            Capability.PRIORITIES,
            Capability.RESOURCES,
            Capability.LIMITS,
        }
    )

    def __init__(
        self,
        max_workers: int | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] | list[Any] = (),
        idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT,
        resources: Mapping[str, float] | None = None,
        batch_size: int | None = None,
    ) -> None:
        problems: list[str] = []
        if idle_timeout is not None and (
            isinstance(idle_timeout, bool)
            or not isinstance(idle_timeout, (int, float))
            or not idle_timeout >= 0
        ):
            problems.append(
                f"  idle_timeout: must be a number of seconds >= 0, or None (got {idle_timeout!r})"
            )
        if max_workers is not None and (
            isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1
        ):
            problems.append(f"  max_workers: must be a whole number >= 1 (got {max_workers!r})")
        given: tuple[object, object] = (initializer, initargs)  # as users pass them
        if given[0] is not None and not callable(given[0]):
            problems.append(f"  initializer: must be a callable or None (got {initializer!r})")
        if not isinstance(given[1], (tuple, list)):
            problems.append(
                f"  initargs: must be a tuple of arguments for the initializer (got {initargs!r})"
            )
        batch_problem = batch_size_problem(batch_size)
        if batch_problem is not None:
            problems.append(f"  {batch_problem}")
        if problems:
            raise InvalidOptionsError(
                "Invalid options for task runner 'process':\n" + "\n".join(problems)
            )
        self.max_workers = max_workers
        self.initializer = initializer
        self.initargs = tuple(initargs)
        self.idle_timeout = idle_timeout
        self.resources = check_capacities("process", resources)
        self.batch_size = batch_size
        self._pool: WorkerPool | None = None
        self._session: Session | None = None
        self._warm = False
        self._gate: ResourcePool | None = None

    def on_start(self) -> None:
        if os.name != "posix":
            raise BatonError(
                "The 'process' task runner needs a POSIX system (Linux, macOS). On this "
                "system use task_runner='thread', or a cluster runner such as 'dask'."
            )
        if _worker.loading:
            raise BatonError(_no_guard_message())
        if not sys.executable:
            raise BatonError(
                "The 'process' task runner starts workers with sys.executable, which is "
                "empty in this interpreter (an embedded Python). Use task_runner='thread'."
            )
        workers = self.max_workers
        if workers is None:
            from baton._settings import get_settings

            workers = get_settings().process_max_workers or default_max_workers()
        init_blob = None
        if self.initializer is not None:
            try:
                init_blob = cloudpickle_dumps((self.initializer, self.initargs))
            except Exception as exc:
                raise InvalidOptionsError(
                    "Invalid options for task runner 'process':\n  initializer, initargs: "
                    f"cannot be pickled to send them to the workers ({type(exc).__name__}: "
                    f"{exc})"
                ) from exc
        if self.resources is not None:
            self._gate = ResourcePool("process", self.resources)
        if self._flow_run_owned:
            from baton._runners._process_shared import lease

            key = (workers, init_blob, self.idle_timeout)
            self._pool, self._session = lease(
                key, workers, init_blob, self.idle_timeout, self.batch_size
            )
            self._warm = True
            return
        from baton._runners._process_pool import WorkerPool

        self._pool = WorkerPool(workers, init_blob)
        self._session = self._pool.open_session(batch_size=self.batch_size)
        self._warm = False

    def on_shutdown(self, wait: bool) -> None:
        gate, self._gate = self._gate, None
        if gate is not None:
            for future in gate.drain():
                future.cancel()
        pool, self._pool = self._pool, None
        session, self._session = self._session, None
        if pool is None or session is None:
            return
        if self._warm:
            from baton._runners._process_shared import give_back

            give_back(pool, session, wait)
        else:
            pool.close(wait)

    def submit(self, run: TaskRun) -> None:
        pool, session = self._pool, self._session
        if pool is None or session is None:
            raise RunnerClosedError(f"Task runner 'process' is not started ({self._status}).")
        if run.task.options.resources:
            gate = self._gate or ResourcePool("process", {})  # raises, naming what to declare
            gate.offer(run, lambda: pool.submit(run, session))
        else:
            pool.submit(run, session)

    def cancel(self, run: TaskRun) -> bool:
        if not run.future.done():
            # Called directly: as the run's own cancel(), which marks it CANCELLED if it
            # has not started and calls back here.
            return run.future.cancel()
        pool = self._pool
        return pool is not None and pool.cancel(run)

    def __repr__(self) -> str:
        workers = self._pool.max_workers if self._pool else self.max_workers
        return f"<ProcessRunner max_workers={workers} {self._status}>"


def _no_guard_message() -> str:
    module = "a module"
    frame_ = sys._getframe(1)
    while frame_ is not None:
        if frame_.f_code.co_name == "<module>":
            module = f"module {frame_.f_globals.get('__name__', '?')!r}"
            break
        frame_ = frame_.f_back  # type: ignore[assignment]
    return (
        f"A flow on the 'process' task runner was started while a worker process imported "
        f"{module}, which a task needs. That module starts the flow when it is imported: "
        'put the call under `if __name__ == "__main__":` so that importing the module '
        "only defines things."
    )
