"""What runs on a Dask worker: the task that executes one run with `run_call`.

Each run is one Dask task, `run_task(call, inputs, attempt, topic, number)`. Its
inputs are the results of upstream runs (Dask puts them in, worker to worker) or,
for upstream runs the driver waited for, their final States. It returns the run's
plain result when the run completed, so that downstream tasks receive it as any
Dask result; otherwise it raises `RunEnded`, which carries the run's small
`RemoteResult`. Dask then errs every downstream task without running it, and the
driver learns each run's outcome from the status of its Dask future, without
fetching any result.

The driver hears that a run started (and of its retries) through a Dask event
topic of its session: the starts a worker sees within a few milliseconds go in one
event, or at once when one of those runs ends first (Dask keeps the order of what a
worker sends, so a run's start is heard before its end). While the run executes,
the worker thread lends its slot to Dask whenever the task blocks on other runs
(`secede`/`rejoin`), and task runs submitted by the task go to the same cluster
through the worker's own client.
"""

from __future__ import annotations

import pickle
import threading
from typing import TYPE_CHECKING, Any, final

from baton import State, StateType
from baton.runners import (
    NestedFailure,
    RemoteResult,
    RunCall,
    cloudpickle_dumps,
    decode_result,
    dumps,
    encode_result,
    lend_slot,
    rebuild_problem,
    run_batch,
    run_call,
    unrebuildable_result,
)

if TYPE_CHECKING:
    from baton import TaskRun
    from distributed import Worker

    from baton_dask._runner import DaskTaskRunner

__all__ = [
    "LARGE_RESULT_BYTES",
    "PICK",
    "BatchValues",
    "Finished",
    "Large",
    "RunEnded",
    "Runs",
    "batch_outcomes",
    "pick_value",
    "run_batch_task",
    "run_task",
]

LARGE_RESULT_BYTES = 16 * 1024
"""Results that pickle to more than this stay on the cluster, wrapped in `Large`, until
read one by one; smaller ones may be fetched together with others of the same task."""

REPORT_SECONDS = 0.005
"""How long a worker gathers the starts of runs before it reports them in one event."""

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


@final
class Finished:
    """The result of a run that completed while runs it submitted failed with nothing
    handling them: the driver sees the wrapper's type, fetches it at once and reports
    those failures to the flow (`TaskRun.finish`)."""

    __slots__ = ("unhandled", "value")

    def __init__(self, value: Any, unhandled: tuple[NestedFailure, ...]) -> None:
        self.value = value
        self.unhandled = unhandled

    def __reduce__(self) -> tuple[Any, ...]:
        return (Finished, (self.value, self.unhandled))


def unwrap(value: Any) -> Any:
    """A result as the driver reads it."""
    kind = type(value)
    return value.value if kind is Large or kind is Finished else value


def as_input(value: Any) -> Any:
    """An upstream's value as the engine takes it: a plain State stands for the outcome of
    an upstream the driver waited for; a State that a task returned is its result."""
    kind = type(value)
    if kind is tuple and len(value) == 3 and type(value[2]) is BatchValues and value[0] == PICK:
        return value[2].input(value[1])
    if kind is Large or kind is Finished:
        value = value.value
        if isinstance(value, State):
            return State.completed(value)
    return value


PICK = "baton-pick-from-batch"
"""Marks an input taken from a batch: ``(PICK, index, batch)``, where Dask puts the
`BatchValues` of the batch's Dask task in place of its future."""

# What the outcome of a run of a batch is: see `BatchValues`.
_INLINE, _HELD, _FINISHED, _ENDED = 0, 1, 2, 3


@final
class BatchValues:
    """The result of a batch's Dask task: stays on the cluster. `values` holds each run's
    result (None for a run that did not complete); `outcomes`, which the driver fetches
    (through `batch_outcomes`), says per run how it ended: ``(0, value)`` completed with a
    small value, which travels in it; ``(1,)`` completed with a value that stays here;
    ``(2, value, unhandled)`` completed while runs it submitted failed with nothing
    handling them; ``(3, RunEnded)`` did not complete. `seconds` is how long each took."""

    __slots__ = ("outcomes", "seconds", "values")

    def __init__(self, values: list[Any], outcomes: list[Any], seconds: list[float]) -> None:
        self.values = values
        self.outcomes = outcomes
        self.seconds = seconds

    def __reduce__(self) -> tuple[Any, ...]:
        return (BatchValues, (self.values, self.outcomes, self.seconds))

    def input(self, index: int) -> Any:
        """Run `index`'s value as a downstream run's input (as `as_input` gives it)."""
        outcome = self.outcomes[index]
        if outcome[0] == _ENDED:
            result: RemoteResult = pickle.loads(outcome[1].blob)
            return result.state
        value = self.values[index]
        return State.completed(value) if isinstance(value, State) else value


def batch_outcomes(batch: BatchValues) -> tuple[list[Any], list[float]]:
    """The small part of a batch's result, for the driver."""
    return batch.outcomes, batch.seconds


def pick_value(batch: BatchValues, index: int) -> Any:
    """One held value of a batch, for the driver that reads it."""
    return batch.values[index]


@final
class Runs:
    """The runs of a batch, as its Dask task takes them: their calls pickled, in one
    argument that Dask does not look into (it would look at each of a thousand calls for
    a Dask future to wait for; their upstream values, which may be Dask futures, go
    beside it). Pickled here, once: a scheduler in the flow's process keeps the recent
    messages it sent to workers (``distributed.admin.low-level-log-length``), and those
    would keep every call of a batch, its arguments included, alive for as long."""

    __slots__ = ("blob",)

    def __init__(self, blob: bytes) -> None:
        self.blob = blob

    @classmethod
    def pack(cls, calls: list[RunCall], attempts: list[int], numbers: list[int]) -> Runs:
        return cls(cloudpickle_dumps((calls, attempts, numbers)))

    def unpack(self) -> tuple[list[RunCall], list[int], list[int]]:
        calls, attempts, numbers = pickle.loads(self.blob)
        return calls, attempts, numbers

    def __reduce__(self) -> tuple[Any, ...]:
        return (Runs, (self.blob,))


def run_batch_task(runs: Runs, inputs: list[list[Any]] | None, topic: str = "") -> BatchValues:
    """The Dask task of a batch of runs: each runs as it would alone (`run_batch`).
    `inputs`: each run's upstream values, None when no run has any."""
    calls, attempts, numbers = runs.unpack()
    if inputs is None:
        values_in: list[Any] = [()] * len(calls)
    else:
        values_in = [[as_input(v) for v in each] if each else () for each in inputs]
    reporters = [_reporter(topic, n) for n in numbers] if topic and numbers else None

    def on_state(index: int, state: State) -> None:
        assert reporters is not None
        report = reporters[index]
        if report is not None:
            report(state)

    with lend_slot(_SECESSION):
        results = run_batch(
            calls,
            values_in,
            attempts=attempts,
            on_state=on_state if reporters is not None else None,
            nested=_worker_runner(),
        )
    del values_in
    if reporters is not None:
        for report in reporters:  # starts not sent yet go ahead of the batch's end
            if report is not None:
                report.ended()
    values: list[Any] = []
    outcomes: list[Any] = []
    seconds: list[float] = []
    for call, (result, took) in zip(calls, results, strict=True):
        value, outcome = _batch_outcome(call, result)
        values.append(value)
        outcomes.append(outcome)
        seconds.append(took)
    return BatchValues(values, outcomes, seconds)


def _batch_outcome(call: RunCall, result: RemoteResult) -> tuple[Any, Any]:
    """(the value to keep, the outcome) of one run of a batch, as `run_task` decides."""
    state = result.state
    if state.type is StateType.COMPLETED:
        value = state.result()
        size = _pickled_size(value)
        if isinstance(size, int):
            # As in `run_task`: a run whose result cannot be rebuilt fails.
            problem = rebuild_problem(value)
            if problem:
                failed = unrebuildable_result(call.task.name, call.name, problem)
                ended_result = RemoteResult(failed, None, result.unhandled, result.attempt)
                return None, (_ENDED, ended(call, ended_result))
            if result.unhandled:
                return value, (_FINISHED, value, result.portable().unhandled)
            if size > LARGE_RESULT_BYTES or isinstance(value, State):
                return value, (_HELD,)
            return value, (_INLINE, value)
        error = pickle.PicklingError(
            f"Task run {call.name!r} (task {call.task.name!r}) returned a value that "
            f"cannot be pickled ({size}), so it cannot travel from its Dask worker. Return "
            "something picklable (plain data, or a path to where the value was written)."
        )
        result = RemoteResult(State.failed(error), None, result.unhandled, result.attempt)
    return None, (_ENDED, ended(call, result))


class RunEnded(Exception):
    """Ends the Dask task of a run that did not complete; carries its `RemoteResult`,
    pickled (`encode_result`), with a short summary for Dask's own messages.

    Dask hands this same exception to every downstream task, which is how the driver
    tells a run that failed from one whose upstream failed.
    """

    def __init__(self, run_id: int, run_name: str, blob: bytes, summary: str) -> None:
        super().__init__(run_id, run_name, blob, summary)
        self.run_id = run_id
        self.run_name = run_name
        self.blob = blob
        self.summary = summary

    def __repr__(self) -> str:
        return f"RunEnded({self.summary!r})"

    def __str__(self) -> str:
        # Short: Dask replaces exceptions with long messages by plain ones.
        return self.summary


# -- the task --------------------------------------------------------------------------


def run_task(
    call: RunCall, inputs: list[Any], attempt: int = 1, topic: str = "", number: int = 0
) -> Any:
    """The Dask task of one run: run it, return the result or raise `RunEnded`."""
    values = [as_input(v) for v in inputs] if inputs else ()
    report = _reporter(topic, number) if topic else None
    with lend_slot(_SECESSION):
        result = run_call(call, values, attempt=attempt, on_state=report, nested=_worker_runner())
    del values
    if report is not None:
        report.ended()
    state = result.state
    if state.type is StateType.COMPLETED:
        value = state.result()
        del state
        size = _pickled_size(value)
        if isinstance(size, int):
            # Found here, so that the run fails rather than completing with a result
            # nobody can read (a large one is read only later, one by one).
            problem = rebuild_problem(value)
            if problem:
                failed = unrebuildable_result(call.task.name, call.name, problem)
                raise ended(call, RemoteResult(failed, None, result.unhandled, result.attempt))
            if result.unhandled:
                return Finished(value, result.portable().unhandled)
            # A State as a result is wrapped too, so that it cannot pass for an outcome.
            if size > LARGE_RESULT_BYTES or isinstance(value, State):
                return Large(value)
            return value
        error = pickle.PicklingError(
            f"Task run {call.name!r} (task {call.task.name!r}) returned a value that "
            f"cannot be pickled ({size}), so it cannot travel from its Dask worker. Return "
            "something picklable (plain data, or a path to where the value was written)."
        )
        result = RemoteResult(State.failed(error), None, result.unhandled, result.attempt)
    raise ended(call, result)


class _Reports:
    """The starts (and retries) of runs on this worker not reported yet, per topic: sent as
    one event per topic a few milliseconds after the first, from the worker's event loop."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.lock = threading.Lock()
        self.pending: dict[str, list[Any]] = {}

    def add(self, topic: str, started: float, number: int) -> None:
        """Run `number` started at `started` (``time.time()``)."""
        with self.lock:
            entries = self.pending.get(topic)
            if entries is not None:
                entries += (started, number)
                return
            # The worker's address first: the runs that follow started there.
            self.pending[topic] = [self.worker.address, started, number]
        loop: Any = self.worker.loop
        loop.add_callback(self._later)

    def take(self, topic: str, number: int) -> bool:
        """Take the start of run `number` out of what is waiting to be sent; True if it
        was there (it then goes with the run's next report, ahead of it)."""
        with self.lock:
            entries = self.pending.get(topic)
            if entries is None or number not in entries:
                return False
            at = entries.index(number)
            del entries[at - 1 : at + 1]  # its start time and number
            return True

    def send_now(self, topic: str, number: int) -> None:
        """Send what is waiting for `topic` now if the start of run `number` is among it:
        called as the run ends, so that its start goes ahead of its end. Dask passes
        both through the same streams, worker to scheduler to client, in order, so the
        flow's process hears where the run ran before it hears that it ended."""
        with self.lock:
            entries = self.pending.get(topic)
            if entries is None or number not in entries:
                return
            del self.pending[topic]
        try:
            self.worker.log_event(topic, entries)
        except Exception:  # the worker is closing: nobody is left to tell
            pass

    def _later(self) -> None:
        import asyncio

        asyncio.get_running_loop().call_later(REPORT_SECONDS, self.flush)

    def flush(self) -> None:
        with self.lock:
            pending, self.pending = self.pending, {}
        for topic, entries in pending.items():
            try:
                self.worker.log_event(topic, entries)
            except Exception:  # the worker is closing: nobody is left to tell
                pass


_reports: dict[int, _Reports] = {}
_reports_lock = threading.Lock()


def _reporter(topic: str, number: int) -> _Reporter | None:
    """What `run_call` calls with each state of run `number` (see `_Reporter`); None
    outside a Dask worker."""
    from distributed import get_worker

    try:
        worker = get_worker()
    except ValueError:
        return None
    reports = _reports.get(id(worker))
    if reports is None or reports.worker is not worker:
        with _reports_lock:
            reports = _reports[id(worker)] = _Reports(worker)
    return _Reporter(reports, topic, number)


class _Reporter:
    """Reports the states of one run: the first, RUNNING, goes as the run's number, with
    the starts of other runs; later ones (Retrying, RUNNING again) pickled, with it, at
    once and waiting for the scheduler to have it: the flow's process counts a run's
    attempts from them, and the next attempt may kill this worker. As the run ends,
    `ended()` sends its start if it still waits, so that no run ends unplaced."""

    __slots__ = ("first", "number", "reports", "started", "topic")

    def __init__(self, reports: _Reports, topic: str, number: int) -> None:
        self.reports = reports
        self.topic = topic
        self.number = number
        self.first = True
        self.started = 0.0

    def __call__(self, state: State) -> None:
        reports = self.reports
        if self.first:
            self.first = False
            self.started = state.timestamp
            reports.add(self.topic, state.timestamp, self.number)
            return
        worker = reports.worker
        try:
            from distributed.utils import sync

            rpc: Any = worker.scheduler
            msg: list[Any] = [[self.number, dumps(state), worker.address]]
            if reports.take(self.topic, self.number):  # its start must not come after this
                msg = [worker.address, self.started, self.number, *msg]
            sync(worker.loop, rpc.log_event, topic=self.topic, msg=msg)
        except Exception:  # the scheduler is out of reach: the run goes on regardless
            pass

    def ended(self) -> None:
        """The run ended here: its start, if not sent yet, goes now, ahead of its end."""
        if not self.first:
            self.reports.send_now(self.topic, self.number)


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


def ended(call: RunCall, result: RemoteResult) -> RunEnded:
    """The exception that ends the Dask task of a run that did not complete."""
    state = result.state
    blob = encode_result(result, call.task.name, call.name)
    name = state.name or state.type.value
    text = (state.message or "")[:300]
    summary = f"Task run {call.name!r} ended {name}" + (f": {text}" if text else "")
    return RunEnded(call.id, call.name, blob, summary)


def decode(error: RunEnded, run: TaskRun) -> RemoteResult:
    """The `RemoteResult` a `RunEnded` carries, rebuilt in the driver."""
    return decode_result(error.blob, run)


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
