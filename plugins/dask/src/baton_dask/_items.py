"""What a session keeps per run and per result, and the watch over a cluster that lost
every worker."""

from __future__ import annotations

import logging
import pickle
import threading
import time
from typing import TYPE_CHECKING, Any, final

from baton import CrashedRun, State
from baton.runners import FINAL_STATE_TYPES, Attempts

if TYPE_CHECKING:
    import weakref

    from baton import Future, TaskRun
    from baton.runners import RunCall
    from distributed import Future as DaskFuture

    from baton_dask._options import Placement
    from baton_dask._session import Session

__all__ = [
    "Fetch",
    "Item",
    "after",
    "cancel_reason",
    "cannot_load",
    "forget",
    "report_started",
    "shut_down",
    "watch_workers",
]

logger = logging.getLogger("baton.dask")

_FINAL = FINAL_STATE_TYPES


@final
class Item:
    """One submission of a run to Dask (a run resubmitted after a crash gets a new one)."""

    __slots__ = (
        "allowed",
        "attempt",
        "batch",
        "call",
        "future",
        "index",
        "inputs",
        "key",
        "number",
        "placement",
        "run",
        "started",
        "upstreams",
    )

    def __init__(
        self,
        run: TaskRun,
        call: RunCall,
        upstreams: list[Future[Any]],
        allowed: frozenset[int],
        inputs: list[Any],
        placement: Placement | None,
        attempt: int,
        key: str,
        number: int,
        future: DaskFuture[Any] | None,
    ) -> None:
        self.run = run
        self.call = call
        self.upstreams = upstreams
        self.allowed = allowed
        self.inputs = inputs
        self.placement = placement
        # The attempt being made: the worker reports each retry it makes (`Attempts.note`).
        self.attempt = Attempts(run, attempt)
        self.key = key
        self.number = number
        # None for a run waiting in the session's batches; once sent, the Dask future of
        # its own task, or of the batch it went in (at `index`).
        self.future: Any = future
        self.batch: Any = None
        self.index = 0
        self.started = False

    def blamable(self) -> list[Future[Any]]:
        """The upstreams whose failure ends this run: not those taken through allow_failure,
        which were final when the run was sent, and went in as their States."""
        allowed = self.allowed
        return [u for i, u in enumerate(self.upstreams) if i not in allowed]


@final
class Fetch:
    """Loads one completed run's result from the cluster, when the run's State is read."""

    __slots__ = (
        "__weakref__",
        "future",
        "group",
        "key",
        "loaded",
        "run_name",
        "session",
        "small",
        "task_name",
        "value",
    )

    def __init__(
        self,
        session: Session,
        future: DaskFuture[Any],
        key: str,
        group: str,
        small: bool,
        run_name: str,
        task_name: str,
    ) -> None:
        self.session = session
        self.run_name = run_name
        self.task_name = task_name
        self.future: DaskFuture[Any] | None = future
        self.key = key
        self.group = group
        self.small = small
        self.loaded = False
        self.value: Any = None

    def __call__(self) -> Any:
        if self.loaded:
            value, self.value = self.value, None
            return value
        return self.session.load(self)


def after(futures: list[Future[Any]], run: TaskRun, then: Any) -> None:
    """Call `then()` once every one of `futures` is final; if it raises, `run` crashes
    (nobody else would hear of the error, and the run would never end)."""
    count = [len(futures) + 1]
    lock = threading.Lock()

    def one_done(_: Future[Any]) -> None:
        with lock:
            count[0] -= 1
            ready = count[0] == 0
        if ready:
            try:
                then()
            except Exception as exc:
                run.set_state(
                    State.crashed(exc, f"Task run {run.name!r} could not be sent to Dask: {exc}")
                )

    for future in futures:
        future.add_done_callback(one_done)
    one_done(futures[0])


def forget(unread: dict[str, weakref.ref[Fetch]], key: str, _: object) -> None:
    unread.pop(key, None)


def cannot_load(run_name: str, task_name: str, exc: BaseException) -> pickle.UnpicklingError:
    """The error of a result that came back but cannot be rebuilt here (as `decode_result`
    words it)."""
    return pickle.UnpicklingError(
        f"The result of task run {run_name!r} (task {task_name!r}) came back from its "
        f"worker but cannot be unpickled here ({type(exc).__name__}: {exc}). Return plain "
        "data, or types importable in both places."
    )


def shut_down(run: TaskRun) -> State:
    return State.cancelled(
        f"Task run {run.name!r} was cancelled: task runner 'dask' shut down before it finished."
    )


def cancel_reason(future: DaskFuture[Any]) -> BaseException | None:
    state = getattr(future, "_state", None)
    reason = getattr(state, "exception", None)
    return reason if isinstance(reason, BaseException) else None


# -- a cluster without workers ---------------------------------------------------


def watch_workers(self: Session) -> None:
    """Crash the runs waiting on the cluster once it has had no worker for
    `no_workers_timeout` seconds: Dask would keep them waiting for ever."""
    limit = self.no_workers_timeout
    assert limit is not None
    period = min(1.0, max(limit / 4, 0.05))
    since: float | None = None
    while not self._closed:
        time.sleep(period)
        if not self._items:
            since = None
            continue
        try:
            client: Any = self.client
            count = client.scheduler_info(n_workers=0).get("n_workers", 1)
        except Exception:
            continue  # the scheduler cannot be asked now: its own timeouts apply
        if count:
            since = None
            continue
        now = time.monotonic()
        if since is None:
            since = now
        elif now - since >= limit:
            _no_workers(self, limit)
            since = None


def _no_workers(self: Session, limit: float) -> None:
    while True:
        try:
            items = list(self._items.values())
            break
        except RuntimeError:  # the collector thread changed it meanwhile
            continue
    for item in items:
        run = item.run
        native = self.native.get(run.future)
        in_batch = type(native) is tuple and native[2] is item.future
        if run.state.type in _FINAL or (native is not item.future and not in_batch):
            continue
        message = (
            f"Task run {run.name!r} crashed: the Dask cluster ({self.label}) has had no "
            f"worker for {limit:g} s, so nothing could run it. Start workers (or check "
            "why they left: their logs, memory limits), or raise the runner's "
            "no_workers_timeout option (None waits for ever)."
        )
        self.cancel(run)
        self._items.pop(item.number, None)
        try:
            run.set_state(State.crashed(CrashedRun(message), message))
        except BaseException:
            logger.exception("Reporting the end of task run %r raised", run.name)


# -- what workers report ------------------------------------------------------


def report_started(self: Session, entries: Any) -> None:
    """What a worker reported: its address, then the start time and number of each
    run that started there, and `[number, state, address]` for a later state of one
    (Retrying, then RUNNING again)."""
    items = self._items
    where: str | None = None
    at: float | None = None
    for entry in entries:
        try:
            kind = type(entry)
            if kind is int:
                item = items.get(entry)
                if item is not None:
                    item.started = True
                    run = item.run
                    if not run.set_running(where, at) and run.state.is_cancelled():
                        _ran_cancelled(run.name, where)
                elif self._cancelled_unheard:
                    name = self._cancelled_unheard.pop(entry, None)
                    if name is not None:
                        _ran_cancelled(name, where)
                continue
            if kind is float:
                at = entry
                continue
            if kind is str:
                where = entry
                continue
            item = items.get(entry[0])
            if item is None:
                continue
            state: State = pickle.loads(entry[1])
            item.attempt.note(state)
            item.run.set_state(state, entry[2] if len(entry) > 2 else None)
        except BaseException:  # an observer that raised: the run goes on regardless
            logger.exception("Reporting that a task run started on Dask raised")


def _ran_cancelled(name: str, where: str | None) -> None:
    """Say that a run cancelled in the moment before its start was heard did start."""
    logger.warning(
        "Task run %r was cancelled as it started on Dask worker %s: Dask cannot stop it "
        "there, so its function runs to its end; its state stays Cancelled and its "
        "result is dropped.",
        name,
        where,
    )
