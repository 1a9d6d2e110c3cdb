"""The driver side of the `ray` runner: submitting runs to Ray, and hearing how they ended.

A run goes to Ray once its upstream runs are final, with each upstream given as its
final State, or, for one that completed here with a value in the object store, as
the ObjectRef of that value: Ray moves the value worker to worker. The driver fetches
only each run's small outcome and reports completed runs lazily, so a value reaches
this process only when something here reads it. Whether an upstream failure ends the
run UpstreamFailed, or reaches it through `allow_failure`, is decided on the worker.

A run that can be retried (`retries`, or a `timeout_seconds` that kills an attempt)
is sent one attempt at a time; the driver retries after the delay, also when the
attempt's worker died or its timeout killed it.

At most `max_pending` runs are in Ray at once; the rest wait in a queue, by priority
(higher first), in order within one. Ray has no priorities of its own: once a run is
in Ray, Ray decides when it starts.
"""

from __future__ import annotations

import logging
import pickle
import threading
import weakref
from collections.abc import Callable, Mapping
from functools import partial
from queue import SimpleQueue
from typing import TYPE_CHECKING, Any, Final, NoReturn, final

import ray
from baton import (
    CrashedRun,
    InvalidOptionsError,
    RunnerClosedError,
    State,
    StateType,
)
from baton.runners import (
    FINAL_STATE_TYPES,
    Attempts,
    RemoteResult,
    ResourcePool,
    RunQueue,
    upstream_failed,
)
from ray import exceptions as ray_errors

from baton_ray._failures import argument_error, failure_state, first_line, read_error
from baton_ray._jobs import ATTEMPT, TIMED, WHOLE, Job, freeze, when_done
from baton_ray._options import (
    cluster_shortfall,
    current_options,
    merge,
    options_from_resources,
    options_from_tags,
)
from baton_ray._payloads import pack as _pack
from baton_ray._payloads import task_payload as _task_payload
from baton_ray._watcher import Watcher
from baton_ray._worker import (
    FINAL,
    INLINE,
    RETRY,
    STORED,
    run_attempt,
    run_timed_attempt,
    run_whole,
)

if TYPE_CHECKING:
    from baton import Future
    from baton.runners import TaskRun

__all__ = ["Driver"]

logger = logging.getLogger("baton")

_FINAL: Final = FINAL_STATE_TYPES
_STORED_HEAD: Final = (STORED,)
_remotes: dict[tuple[str, Any], Any] = {}
_BASES: Final = {WHOLE: run_whole, ATTEMPT: run_attempt, TIMED: run_timed_attempt}


def _remote_for(kind: str, options: Mapping[str, Any], run: TaskRun) -> Any:
    """The remote function for `kind` with these Ray options (built once per options)."""
    base = _BASES[kind]
    if not options:
        return base
    key = (kind, freeze(options))
    remote = _remotes.get(key)
    if remote is None:
        try:
            remote = base.options(**options)
        except Exception as exc:
            raise InvalidOptionsError(
                f"Ray refused the options {dict(options)!r} of task run {run.name!r} "
                f"(task {run.task.name!r}): {type(exc).__name__}: {exc}"
            ) from exc
        if len(_remotes) > 256:
            _remotes.clear()
        _remotes[key] = remote
    return remote


@final
class _Fetch:
    """Loads a completed run's value from the object store, the first time it is read.

    It holds the value's ObjectRef only until then (`State.completed_lazily` drops
    its loader once it has the value), so the store frees the value as soon as
    nothing else needs it; a downstream run handed over before that gets the ObjectRef.
    """

    __slots__ = ("driver", "name", "ref", "task_name")

    def __init__(self, driver: Driver, run: TaskRun, ref: Any) -> None:
        self.driver = driver
        self.name = run.name
        self.task_name = run.task.name
        self.ref = ref

    def __call__(self) -> Any:
        ref = self.ref
        if ref is None or self.driver.session_ended():
            raise self._gone()
        try:
            value = ray.get(ref)
        except Exception as exc:
            if self.driver.session_ended():
                raise self._gone() from exc
            if isinstance(exc, (ray_errors.RaySystemError, pickle.UnpicklingError)):
                raise pickle.UnpicklingError(
                    f"The result of task run {self.name!r} (task {self.task_name!r}) is in "
                    "Ray's object store but cannot be unpickled here "
                    f"({type(exc).__name__}: {first_line(str(exc))}). Return plain data, or "
                    "types importable both on the workers and in the flow's process."
                ) from exc
            raise
        self.ref = None
        return value

    def _gone(self) -> RunnerClosedError:
        return RunnerClosedError(
            f"The result of task run {self.name!r} stayed on the Ray cluster, and task runner "
            "'ray' shut down the Ray it had started before anything read it. Read results "
            "(or return them from the flow) before the flow ends, or connect to Ray yourself "
            "(ray.init()) or start the runner yourself (`with runner:`) to keep them."
        )


# The fetch of each completed run whose value is in the store, by its future: a
# downstream run is given the value's ObjectRef while the fetch has not read it.
_stored: weakref.WeakKeyDictionary[Future[Any], _Fetch] = weakref.WeakKeyDictionary()
_stored_lock = threading.Lock()


def _stored_ref(future: Future[Any]) -> Any:
    """The ObjectRef of a completed run's value still in the store, or None."""
    with _stored_lock:
        fetch = _stored.get(future)
    return None if fetch is None else fetch.ref


@final
class Driver:
    """Sends one runner's runs to Ray and reports their states."""

    def __init__(
        self, max_pending: int, session_ended: Callable[[], bool], batch_size: int | None = None
    ) -> None:
        from baton_ray._batches import Batches

        self.max_pending = max_pending
        self.session_ended = session_ended
        """Whether the Ray session this driver's results live in has been shut down."""
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._queue: RunQueue[Job] = RunQueue()  # by priority, FIFO within one
        self._active: dict[int, Job] = {}  # holding a place in Ray, by run id
        self._parked: dict[int, Job] = {}  # waiting for an upstream run or a retry delay
        # By run id: the jobs parked on that run (their first upstream not final).
        self._dependents: dict[int, list[Job]] = {}
        self._reports: SimpleQueue[tuple[Any, Any, Any] | None] = SimpleQueue()
        self._reporter: threading.Thread | None = None
        self._watcher: Watcher | None = None
        self._closing: str | None = None
        self._fitting: set[Any] = set()  # Ray options known to fit the cluster
        self._batches = Batches(self, batch_size)
        self._gate: ResourcePool | None = None  # for runs with `resources`; made on first use

    def _busy(self) -> bool:
        return bool(self._active or self._queue or self._parked or self._batches.jobs)

    # -- handing runs over ----------------------------------------------------------------

    def _check_fits(self, run: TaskRun, ray_options: Mapping[str, Any]) -> None:
        """Raise when the run asks for more than the whole cluster has (Ray would hold
        it forever, waiting for nodes that never come). Asked once per set of options."""
        key = freeze(ray_options)
        if key in self._fitting:
            return
        shortfall = cluster_shortfall(ray_options)
        if shortfall:
            raise InvalidOptionsError(
                f"Task run {run.name!r} (task {run.task.name!r}) asks for more than the Ray "
                f"cluster has in all: {shortfall}, so it could never start. Ask for less, or "
                "start Ray with more (ray.init(num_gpus=..., resources={...}) or "
                "ray start --resources=...)."
            )
        self._fitting.add(key)

    def submit(self, run: TaskRun) -> None:
        task = run.task
        options = task.options
        kind = (
            WHOLE
            if options.retries == 0 and options.timeout_seconds is None
            else TIMED
            if options.timeout_seconds is not None
            else ATTEMPT
        )
        ray_options = merge(options_from_tags(options.tags, task.name), current_options())
        if options.resources:
            ray_options = merge(options_from_resources(options.resources), ray_options)
        if ray_options:
            self._check_fits(run, ray_options)
        remote = _remote_for(kind, ray_options, run)
        key, blob = _task_payload(run)
        call, upstreams = run.native_call()
        job = Job(run, upstreams, kind, remote)
        job.ray_options = ray_options
        job.call = call
        head: tuple[Any, ...] = (
            key,
            blob,
            run.id,
            run.name,
            call.args,
            call.kwargs,
            call.wait_for,
            call.limits,
        )
        if call.trace_context is not None:  # OpenTelemetry on
            head += (call.trace_context,)
        job.head = _pack(head)
        if options.resources:
            # Held here until this runner's runs leave what it asks for free, and let go
            # by priority: Ray itself starts runs waiting for resources in no set order.
            self._gated(job)
        else:
            self._hand_over(job, raise_errors=True)

    def _gated(self, job: Job) -> None:
        if self._closing is not None:
            self._closed(job.run)
        gate = self._gate
        if gate is None:
            with self._lock:
                gate = self._gate
                if gate is None:
                    try:
                        resources: Any = ray.cluster_resources
                        capacities: dict[str, float] = resources()
                    except Exception:  # the cluster cannot say: nothing is held back
                        capacities = {}
                    gate = self._gate = ResourcePool("ray", capacities)
        if not gate.capacities:
            self._hand_over(job, raise_errors=True)
            return
        at_submit = [True]
        gate.offer(job.run, lambda: self._hand_over(job, raise_errors=at_submit[0]))
        at_submit[0] = False

    def _closed(self, run: TaskRun) -> NoReturn:
        raise RunnerClosedError(
            f"Cannot submit task run {run.name!r}: task runner 'ray' is shutting down."
        )

    def _hand_over(self, job: Job, raise_errors: bool) -> None:
        """Queue `job`, put it in the batches, or send it now."""
        with self._lock:
            if self._closing is not None:
                self._closed(job.run)
            step = self._place(job)
        self._go_on(job, step, raise_errors)

    def _place(self, job: Job) -> str:
        """Put `job` where it goes next, with the lock held: in the batches (then
        "pump"), in the queue ("queued"), or in a place in Ray ("launch")."""
        if self._batches.wants(job):
            self._batches.put(job)
            return "pump"
        if self._queue or len(self._active) >= self.max_pending:
            self._queue.append(job, job.run.priority)
            return "queued"
        self._active[job.run.id] = job
        return "launch"

    def _go_on(self, job: Job, step: str, raise_errors: bool = False) -> None:
        """What `_place` left to do once the lock is let go."""
        if step == "pump":
            self._batches.pump()
        elif step == "launch":
            self._launch(job, raise_errors=raise_errors)

    def _launch(self, job: Job, raise_errors: bool = False) -> None:
        """Send `job` to Ray (it holds a place in `_active`), or park it on an upstream."""
        run = job.run
        if run.future.done():  # cancelled before it went
            self._end(job, run.state)
            return
        inputs = self._inputs(job)
        if not isinstance(inputs, list):
            self._park_on(job, inputs)
            return
        try:
            if job.kind == WHOLE:
                job.value_ref, job.outcome_ref = job.remote.remote(job.head, *inputs)
            elif job.kind == ATTEMPT:
                job.value_ref, job.outcome_ref = job.remote.remote(job.head, job.attempt, *inputs)
            else:
                job.gen = job.remote.remote(job.head, job.attempt, *inputs)
        except Exception as exc:
            error = argument_error(run, exc, job.call)
            if raise_errors:
                with self._lock:
                    self._active.pop(run.id, None)
                raise error from exc
            self._end(job, Attempts(run, job.attempt).finish(State.failed(error)))
            return
        if job.kind == TIMED:
            # A timed attempt reports when it starts, and its clock starts then.
            if run.state.type is StateType.CANCELLED:
                job.stop = "cancel"
        elif not run.set_running() and run.future.done():
            # Ray does not say when a task starts without a stream per run, which
            # doubles its cost: a run reads RUNNING once Ray has it (see docs/runners/ray.md).
            job.stop = "cancel"  # cancelled meanwhile
        if job.stop is not None:
            job.cancel_in_ray()
        if job.kind == TIMED:
            self._watch().watch(job)
        else:
            when_done(job.outcome_ref, partial(self._report, job, job.outcome_ref))

    def _inputs(
        self, job: Job, in_batch: Mapping[int, int] | None = None
    ) -> list[Any] | Future[Any]:
        """The upstream runs as arguments (none without upstreams), or the upstream run
        to wait for first. The first argument holds one entry per upstream: its final
        State, or None for one whose value is in the store, passed as two arguments
        that follow in order: a marker and the value's ObjectRef. (Ray resolves only
        ObjectRefs passed as arguments themselves, and costs per argument: States
        travel together.)

        A run goes to Ray once its upstream runs are final: Ray then has nothing to wait
        for, so cancelling the run never meets a Ray task that waits for its arguments
        (``ray.cancel`` of such a task fails a check in Ray's reference counting, which
        takes the driver down), and an upstream that failed or is retried is known
        before the run goes.

        `in_batch` maps the runs of the batch `job` goes in to their index there: an
        upstream among them, not final yet, is given as its index (a chain sent together).
        """
        if not job.upstreams:
            return []
        finals: list[State | int | None] = []
        inputs: list[Any] = [None]
        for upstream in job.upstreams:
            state = upstream.task_run.state
            if state.type not in _FINAL:
                index = None if in_batch is None else in_batch.get(upstream.task_run.id)
                if index is None:
                    return upstream
                finals.append(index)
                continue
            value_ref = _stored_ref(upstream) if state.type is StateType.COMPLETED else None
            if value_ref is not None:
                finals.append(None)
                inputs += (_STORED_HEAD, value_ref)
            else:
                finals.append(state)
        inputs[0] = tuple(finals)
        return inputs

    def _park_on(self, job: Job, upstream: Future[Any]) -> None:
        upstream_id = upstream.task_run.id
        with self._lock:
            self._active.pop(job.run.id, None)
            self._parked[job.run.id] = job
            self._dependents.setdefault(upstream_id, []).append(job)
        upstream.add_done_callback(lambda _: self._upstream_ended(upstream_id, job))

    def _upstream_ended(self, upstream_id: int, job: Job) -> None:
        with self._lock:
            self._dependents.pop(upstream_id, None)
        self._unpark(job)

    def follower(self, job: Job, fits: Callable[[Job], bool]) -> Job | None:
        """The one job parked on `job` that waits for nothing else and `fits`, taken out
        of the parked ones to go in `job`'s batch after it; None if there is not exactly
        one such job."""
        with self._lock:
            parked = self._dependents.get(job.run.id)
            if parked is None or len(parked) != 1:
                return None
            follower = parked[0]
            if self._parked.get(follower.run.id) is not follower or follower.run.future.done():
                return None
            others = [u for u in follower.upstreams if u.task_run is not job.run]
            if (
                len(others) == len(follower.upstreams)
                or any(u.task_run.state.type not in _FINAL for u in others)
                or not fits(follower)
            ):
                return None
            del self._parked[follower.run.id]
            del self._dependents[job.run.id]
            return follower

    def _unpark(self, job: Job) -> None:
        """A parked job may go on: queue it, or send it at once if there is room."""
        run = job.run
        with self._lock:
            if self._parked.pop(run.id, None) is None:
                return  # cancelled meanwhile
            if run.future.done() or self._closing == "now":
                self._idle.notify_all()
                return
            step = self._place(job)
        self._go_on(job, step)

    def _pump(self) -> None:
        """Send queued jobs while there is room in Ray."""
        while True:
            with self._lock:
                if (
                    self._closing == "now"
                    or not self._queue
                    or len(self._active) >= self.max_pending
                ):
                    return
                job = self._queue.popleft()
                if job.run.future.done():
                    continue  # cancelled while it was queued
                self._active[job.run.id] = job
            self._launch(job)

    # -- hearing back -----------------------------------------------------------------------

    def _report(self, job: Any, ref: Any, outcome: Any) -> None:
        # Called by Ray's own thread: hand over, so that what a run's end sets off
        # (downstream runs, user callbacks) never runs there.
        if self._closing == "now":
            return
        self._reports.put((job, ref, outcome))
        if self._reporter is None:
            with self._lock:
                if self._reporter is None:
                    self._reporter = threading.Thread(
                        target=self._serve_reports, name="baton-ray-reports", daemon=True
                    )
                    self._reporter.start()

    def _serve_reports(self) -> None:
        while True:
            item = self._reports.get()
            if item is None:
                return
            job, ref, outcome = item
            try:
                if type(job) is not Job:
                    self._batches.report(job, ref, outcome)
                elif job.outcome_ref is not ref:
                    pass  # from an earlier launch of a job sent again
                else:
                    if isinstance(outcome, BaseException):
                        self._failed_in_ray(job, outcome)
                    else:
                        self.outcome(job, outcome)
            except BaseException:
                # A done callback that raised (SystemExit too): this thread serves every
                # run of the runner, and goes on.
                logger.exception("Reporting the end of %r raised", job.run)
            del job, ref, outcome, item

    def outcome(self, job: Job, outcome: Any) -> None:
        """What the remote function returned for `job` (see `_worker` for the forms)."""
        kind = outcome[0] if type(outcome) is tuple and outcome else None
        run = job.run
        if kind is not None and type(outcome[-1]) is str:
            # Ray says where a task ran only once it ran: the run reads RUNNING from
            # when Ray has it, and names its worker from its outcome on.
            run.worker = outcome[-1]
        if kind == INLINE:
            self._end(job, State.completed(outcome[1]), outcome[2])
        elif kind == STORED:
            fetch = _Fetch(self, run, job.value_ref)
            with _stored_lock:
                _stored[run.future] = fetch
            self._end(job, State.completed_lazily(fetch), outcome[1])
        elif kind == FINAL:
            result: RemoteResult = outcome[1]
            self._end(job, self._restore_cause(job, result.state), result.unhandled)
        elif kind == RETRY:
            result = outcome[1]
            retry = result.retry
            assert retry is not None
            self._retry(job, retry.state, retry.attempt, retry.delay, result)
        else:
            self._failed_in_ray(job, TypeError(f"unexpected outcome {outcome!r}"))

    def _restore_cause(self, job: Job, state: State) -> State:
        """An UpstreamFailed state with its upstream's own error as the cause, which
        pickling drops."""
        if state.name != "UpstreamFailed" or state.error is None:
            return state
        for upstream in job.upstreams:
            upstream_state = upstream.task_run.state
            if (
                upstream_state.type in _FINAL
                and not upstream_state.is_completed()
                and f"{upstream.name!r}" in str(state.message)
            ):
                return upstream_failed(job.run.name, upstream.name, upstream_state)
        return state

    def _failed_in_ray(self, job: Job, exc: BaseException) -> None:
        """The job's Ray task failed outside the engine (a worker died, a value could not
        be stored, the driver stopped it)."""
        read_error(job.value_ref)
        run = job.run
        state = failure_state(run, job.stop, exc)
        if job.stop in ("cancel", "shutdown"):
            self._end(job, state)
            return
        attempts = Attempts(run, job.attempt)
        # Retried like any attempt: a lost worker, a timeout. Not a failure outside the
        # task's own code (a result Ray cannot store, a task it cannot load): the engine
        # ended the attempt already, as it does on every runner.
        again = state.is_crashed() or state.name == "TimedOut"
        retry = None if self._closing == "now" or not again else attempts.after(state)
        if retry is None:
            self._end(job, attempts.finish(state))
        else:
            self._retry(job, retry.state, retry.attempt, retry.delay)

    def _retry(
        self,
        job: Job,
        retrying: State,
        attempt: int,
        delay: float,
        result: RemoteResult | None = None,
    ) -> None:
        run = job.run
        if result is not None and result.unhandled:
            # Reported with the run's end: the flow fails naming them, whatever comes next.
            job.unhandled += result.unhandled
        run.set_state(retrying)
        if job.batch is not None:
            self._batches.ended(job)
        else:
            self._batches.pump()  # a place in Ray is free
        job.attempt = attempt
        job.outcome_ref = job.value_ref = job.gen = None
        job.items = 0
        job.deadline = None
        job.stop = None
        with self._lock:
            self._active.pop(run.id, None)
            self._parked[run.id] = job
        self._pump()
        self._watch().after(delay, job)

    def _end(self, job: Job, state: State, unhandled: tuple[Any, ...] = ()) -> None:
        run = job.run
        with self._lock:
            self._active.pop(run.id, None)
            self._parked.pop(run.id, None)
            self._batches.jobs.pop(run.id, None)
            queued = bool(self._queue)
        try:
            if not run.future.done():
                run.finish(RemoteResult(state, unhandled=job.unhandled + unhandled))
        finally:
            if job.batch is not None:
                self._batches.ended(job)
            else:
                self._batches.pump()  # a place in Ray is free
            if queued:
                self._pump()
            with self._lock:
                if not self._busy():
                    self._idle.notify_all()

    # -- stopping ---------------------------------------------------------------------------

    def cancel(self, run: TaskRun) -> bool:
        with self._lock:
            job = self._parked.pop(run.id, None)
            if job is None:
                for queued in self._queue:
                    if queued.run is run:
                        job = queued
                        self._queue.remove(queued, run.priority)
                        break
            if job is None and self._batches.cancel(run):
                return True
            if job is not None:
                if not self._busy():
                    self._idle.notify_all()
                return True
            job = self._active.get(run.id) or self._batches.jobs.get(run.id)
        if job is None or job.in_sent_batch():
            # A run of a batch waits or runs inside the batch's one Ray task: Ray cannot
            # stop it alone. It runs on and ends as it would have.
            return False
        job.stop = "cancel"
        job.cancel_in_ray()
        return True

    def waitables(self) -> list[Any]:
        """What to ``ray.wait`` on for the runs in Ray to end."""
        with self._lock:
            jobs = list(self._active.values())
        found = []
        for job in jobs:
            if job.kind == TIMED:
                gen = job.gen
                if gen is not None:
                    found.append(gen.completed())
            elif job.outcome_ref is not None:
                found.append(job.outcome_ref)
        return found + self._batches.waitables()

    def close(self, wait: bool) -> None:
        if wait:
            with self._idle:
                self._closing = "wait"
                self._idle.wait_for(lambda: not self._busy())
        else:
            gate = self._gate
            if gate is not None:
                for future in gate.drain():
                    future.cancel()
            with self._lock:
                self._closing = "now"
                waiting = [*self._queue, *self._parked.values(), *self._batches.queued()]
                running = list(self._active.values()) + self._batches.running()
                self._queue.clear()
                self._parked.clear()
                self._active.clear()
                self._batches.jobs.clear()
            for job in waiting:
                job.run.set_state(
                    State.cancelled(
                        f"Task run {job.run.name!r} was cancelled: task runner 'ray' shut down "
                        "before it started."
                    )
                )
            self._batches.stop_all()
            for job in running:
                job.stop = "shutdown"
                job.cancel_in_ray()
                message = (
                    f"Task run {job.run.name!r} was stopped: task runner 'ray' shut down "
                    "without waiting, and cancelled its Ray task."
                )
                job.run.set_state(State.crashed(CrashedRun(message), message))
        self._reports.put(None)
        watcher = self._watcher
        if watcher is not None:
            watcher.stop()
        for thread in (self._reporter, watcher):
            if thread is not None and thread is not threading.current_thread():
                thread.join(5)

    def _watch(self) -> Watcher:
        watcher = self._watcher
        if watcher is None:
            with self._lock:
                watcher = self._watcher
                if watcher is None:
                    watcher = self._watcher = Watcher(self)
                    watcher.start()
        return watcher
