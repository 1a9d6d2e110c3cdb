"""The runner-author API: everything a task runner needs, and nothing more.

A runner that executes runs in the calling process needs only `TaskRunner` and
`TaskRun.execute()`. A runner that ships runs to other threads, processes or
machines builds on the pieces below; the built-in ``process`` runner and the Dask
and Ray runners use nothing else, so a third-party runner can do all they do.

In the flow's process (the driver)
    `TaskRun.call` (or `TaskRun.native_call()`, for engines that pass upstream
    results worker to worker) packs a run into a picklable `RunCall`.
    `TaskRun.set_running()` / `TaskRun.set_state()` report what the worker says
    meanwhile, and `TaskRun.finish(result)` applies the `RemoteResult` it sends back.
    `unpicklable_arguments` words the error for arguments that cannot be sent.

On the worker
    `run_call(call, upstream, ...)` runs the call with every rule of the engine and
    returns a `RemoteResult`; `encode_result` / `decode_result` carry it across a
    byte stream, `RemoteResult.portable()` for engines that pickle it themselves.
    `lend_slot(pool)` lets a worker that waits on nested runs give its slot up.

Priorities and resources
    `TaskRun.priority` (the task's `priority`, or the one given to `.submit`/`.map`)
    and `TaskRun.resources` (the task's `resources`, such as ``{"GPU": 1.0}``) are
    what a run asks for (`RunCall.resources` on the worker): map them to the
    engine's own mechanism, or order the runs
    you hold back with a `RunQueue` (higher priority first, FIFO within one). A
    `ResourcePool` holds runs until the resources they ask for are free among a
    runner's own runs, and lets them go by priority. A run
    that waits for resources reads PENDING, named `AWAITING_RESOURCES`; a request
    that can never be met should raise from `submit`. Declare
    `Capability.PRIORITIES` / `Capability.RESOURCES` for the conformance tests.
Limits
    A flow run's concurrency and rate limits are kept in its process (a `Limiter`).
    The core admits tagged runs before the runner sees them; a `RunCall` carries
    `RunLimits`, through which `run_call` reaches that limiter from any worker for
    `baton.concurrency`, `baton.rate_limit` and the runs a task submits there. A
    runner that sends the call whole needs to do nothing else.
Batches of small runs
    `BatchQueue` packs the runs that are ready together into batches, sized by
    `BatchSizer` from how long the task's runs take; `run_batch` runs a batch on the
    worker, each run through `run_call`; `batch_size_of` reads a task's
    ``batch_size`` option. See the runner-author guide for a worked outline.
    Before a batch leaves, `TaskRun.mark_sent()` each of its runs (leave out those
    it says were cancelled): a cancellation cannot reach a run queued behind others
    on a worker, so `cancel()` must then say False.

Attempts, crashes and hard timeouts
    `Attempts` is the one retry rule, for the engine and for every runner that
    sees an attempt end outside it: the worker died (`worker_lost`) or it ran past
    its timeout and was stopped (`timed_out`); `Deadlines` keeps such timeouts.

A runner that ships runs elsewhere, in outline (a whole one, on a process pool, is
in ``examples/plugins/baton-pool``)::

    class PoolRunner(TaskRunner):
        name = "pool"
        capabilities = frozenset({Capability.PROCESSES, Capability.NESTED})

        def on_start(self):
            self._pool = concurrent.futures.ProcessPoolExecutor()

        def on_shutdown(self, wait):
            self._pool.shutdown(wait=wait)

        def submit(self, run):
            if not run.set_running():
                return  # cancelled meanwhile
            done = self._pool.submit(run_call, run.call)
            done.add_done_callback(lambda f: run.finish(f.result()))
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from baton._admission import Limiter
from baton._attempts import (
    FINAL_STATE_TYPES,
    Attempts,
    Retry,
    WorkerLostError,
    failure_state,
    run_hooks,
    timed_out,
    worker_lost,
)
from baton._batching import (
    Batch,
    BatchQueue,
    BatchSizer,
    batch_size_of,
    batch_size_problem,
    run_batch,
)
from baton._deadlines import Deadlines
from baton._engine import RunInfo
from baton._errors import RemoteTaskError, RemoteTraceback
from baton._futures import blocking_section
from baton._limits_service import RunLimits
from baton._public import report_public_module as _report_public_module
from baton._remote import (
    NestedFailure,
    RemoteResult,
    RunCall,
    SlotLender,
    current_runner,
    decode_result,
    encode_result,
    lend_slot,
    run_call,
)
from baton._resolve import Upstream
from baton._resources import AWAITING_RESOURCES, ResourcePool, RunQueue
from baton._runner import Capability, TaskRunner
from baton._states import upstream_failed
from baton._taskrun import TaskRun, current_task_run
from baton._travel import (
    cloudpickle_dumps,
    dumps,
    portable_state,
    rebuild_problem,
    unpicklable_arguments,
    unrebuildable_result,
)

if TYPE_CHECKING:
    from pydantic import BaseModel

__all__ = [
    "AWAITING_RESOURCES",
    "FINAL_STATE_TYPES",
    "Attempts",
    "Batch",
    "BatchQueue",
    "BatchSizer",
    "Capability",
    "Deadlines",
    "Limiter",
    "NestedFailure",
    "RemoteResult",
    "RemoteTaskError",
    "RemoteTraceback",
    "ResourcePool",
    "Retry",
    "RunCall",
    "RunInfo",
    "RunLimits",
    "RunQueue",
    "SlotLender",
    "TaskRun",
    "TaskRunner",
    "Upstream",
    "WorkerLostError",
    "batch_size_of",
    "batch_size_problem",
    "blocking_section",
    "cloudpickle_dumps",
    "current_runner",
    "current_task_run",
    "decode_result",
    "dumps",
    "encode_result",
    "failure_state",
    "lend_slot",
    "portable_state",
    "rebuild_problem",
    "run_batch",
    "run_call",
    "run_hooks",
    "timed_out",
    "unpicklable_arguments",
    "unrebuildable_result",
    "upstream_failed",
    "validate_options",
    "worker_lost",
]


def validate_options(model: type[BaseModel], owner: str, values: dict[str, Any]) -> Any:
    """Build a runner's options `model` (a pydantic model) from `values`.

    Raises `InvalidOptionsError` with one line per problem, each naming the option,
    what is wrong and the value given; with ``extra="forbid"`` in the model's config,
    an unknown option is listed with the options there are. `owner` names the runner
    in the message: ``"task runner 'dask'"``.
    """
    from baton._options import validate_options as validate

    return validate(model, owner, values)


# Names defined here report this module, so that docs and reprs show `baton.runners.X`;
# those that `baton` itself exports keep reporting `baton`.
_report_public_module(globals(), __all__, __name__)
