"""One started runner's traffic with its Dask client: runs out as Dask tasks, outcomes back.

Runs reach the cluster through one submitter thread, which sends whatever has
queued up since its last send in one graph (one ``client.map``), so that a
``.map`` of thousands of runs costs a few messages, not thousands. Each run gets
its Dask future at once, before it is sent, so that a downstream run submitted a
moment later can depend on it; the queue keeps submission order, so an upstream
always reaches the scheduler no later than its downstream runs.

Outcomes come back from the status of the Dask futures, which the scheduler
reports without any data: one coroutine on the client's event loop per graph sent
waits for them, and one collector thread turns them into States, a batch at a
time. A finished future completes its run lazily: the result stays on the cluster
until something reads it. Reading one small result fetches, in the same message, the other finished
small results of the same task that nobody has read yet, so that reading the
results of a large ``.map`` one by one costs a few messages, not one each.
"""

from __future__ import annotations

import collections
import functools
import itertools
import secrets
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, final

from baton import BatonError, CrashedRun, RunnerClosedError, State, StateType
from distributed import Future as DaskFuture
from distributed import KilledWorker

from baton_dask._options import Placement
from baton_dask._worker import Large, RunEnded, decode, run_task, unwrap

if TYPE_CHECKING:
    from baton import Future, TaskRun
    from baton._engine import NativeCall
    from distributed import Client

__all__ = ["Session"]

# How many small results one read may fetch along with its own.
PREFETCH_LIMIT = 2048
# How many results one message fetches when the runner shuts down.
_FETCH_CHUNK = 10_000
# How long the submitter waits for more runs while they keep coming, in all and between two.
_LINGER_SECONDS = 0.002
_LINGER_GAP_SECONDS = 0.0003

_PENDING = StateType.PENDING
_COMPLETED = StateType.COMPLETED
_FINAL = frozenset({StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED})


@final
class _Item:
    """One submission of a run to Dask (a run resubmitted after a crash gets a new one)."""

    __slots__ = (
        "allowed",
        "attempt",
        "call",
        "future",
        "inputs",
        "key",
        "placement",
        "run",
        "upstreams",
    )

    def __init__(
        self,
        run: TaskRun,
        call: NativeCall,
        upstreams: list[Future[Any]],
        allowed: set[int],
        inputs: list[Any],
        placement: Placement | None,
        attempt: int,
        key: str,
        future: DaskFuture[Any],
    ) -> None:
        self.run = run
        self.call = call
        self.upstreams = upstreams
        self.allowed = allowed
        self.inputs = inputs
        self.placement = placement
        self.attempt = attempt
        self.key = key
        self.future = future


@final
class _Fetch:
    """Loads one completed run's result from the cluster, when the run's State is read."""

    __slots__ = ("__weakref__", "future", "group", "key", "loaded", "session", "small", "value")

    def __init__(
        self, session: Session, future: DaskFuture[Any], key: str, group: str, small: bool
    ) -> None:
        self.session = session
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


def allowed_upstreams(run: TaskRun) -> set[int]:
    """The ids of the upstream futures that `run` takes through `allow_failure`."""
    from baton._resolve import resolve

    found: set[int] = set()

    def note(future: Future[Any], allowed: bool) -> None:
        if allowed:
            found.add(id(future))

    for part in (run.args, run.kwargs, run.wait_for):
        if part:
            resolve(part, note)
    return found


class Session:
    """What a started runner holds: its client (and the cluster it started), the Dask
    future of each of its runs, and the threads that move runs and outcomes."""

    def __init__(self, client: Client | None, label: str) -> None:
        self._client = client
        self.label = label
        self.token = secrets.token_hex(8)
        self._keys = itertools.count(1)
        self.native: weakref.WeakKeyDictionary[Future[Any], DaskFuture[Any]] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()
        self._queue: collections.deque[_Item] = collections.deque()
        self._cancels: list[DaskFuture[Any]] = []
        # Futures of runs that never reached the scheduler, while a queued run refers to them.
        self._unsent: weakref.WeakSet[DaskFuture[Any]] = weakref.WeakSet()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._finished: collections.deque[_Item] = collections.deque()
        self._finished_wake = threading.Event()
        self._collector: threading.Thread | None = None
        self._closed = False
        self._inflight: dict[int, TaskRun] = {}
        self._idle = threading.Condition(threading.Lock())
        self._unread: dict[str, dict[str, weakref.ref[_Fetch]]] = {}

    @property
    def client(self) -> Client:
        client = self._client
        if client is None:
            # On a worker: the worker's own client, made when a task first submits.
            from distributed import get_client

            client = self._client = get_client()
        return client

    # -- submitting ---------------------------------------------------------------

    def submit(self, run: TaskRun, placement: Placement | None) -> None:
        if self._closed:
            raise RunnerClosedError(f"Task runner 'dask' ({self.label}) has been shut down.")
        call, upstreams = run.native_call()
        with self._idle:
            self._inflight[run.id] = run
        run.future.add_done_callback(self._untrack)
        try:
            if upstreams:
                self.prepare(run, call, upstreams, placement, 1)
            else:
                self.enqueue(run, call, upstreams, set(), [], placement, 1)
        except BaseException:
            # The error reaches the caller of .submit(); the run never existed for Dask.
            self._untrack(run.future)
            raise

    def _untrack(self, future: Future[Any]) -> None:
        with self._idle:
            self._inflight.pop(future.task_run_id, None)
            if not self._inflight:
                self._idle.notify_all()

    def prepare(
        self,
        run: TaskRun,
        call: NativeCall,
        upstreams: list[Future[Any]],
        placement: Placement | None,
        attempt: int,
    ) -> None:
        """Work out each upstream's input and send the run, or wait for the upstreams that
        must be final first: those taken through `allow_failure` (Dask would not run a
        task whose dependency failed), and those not sent to Dask yet."""
        from baton._states import upstream_failed

        allowed = allowed_upstreams(run)
        inputs: list[Any] = []
        waiting: list[Future[Any]] = []
        native = self.native
        for upstream in upstreams:
            state = upstream._state
            final = state.type in _FINAL
            mine = native.get(upstream)
            if allowed and id(upstream) in allowed:
                if not final:
                    waiting.append(upstream)
                elif state.type is _COMPLETED and mine is not None:
                    inputs.append(mine)
                else:
                    inputs.append(upstream.state)
                continue
            if final and state.type is not _COMPLETED:
                run.set_state(upstream_failed(run.name, upstream.name, state))
                return
            if mine is not None:
                inputs.append(mine)
            elif final:
                inputs.append(state)
            else:
                waiting.append(upstream)
        if waiting:
            self._after(
                waiting, run, lambda: self.prepare(run, call, upstreams, placement, attempt)
            )
        else:
            self.enqueue(run, call, upstreams, allowed, inputs, placement, attempt)

    @staticmethod
    def _after(futures: list[Future[Any]], run: TaskRun, then: Any) -> None:
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
                        State.crashed(
                            exc, f"Task run {run.name!r} could not be sent to Dask: {exc}"
                        )
                    )

        for future in futures:
            future.add_done_callback(one_done)
        one_done(futures[0])

    def enqueue(
        self,
        run: TaskRun,
        call: NativeCall,
        upstreams: list[Future[Any]],
        allowed: set[int],
        inputs: list[Any],
        placement: Placement | None,
        attempt: int,
    ) -> None:
        if run.future._state.type in _FINAL:
            return  # cancelled while it waited
        # A new key for every submission: a run sent again (after a crash) must not meet the
        # erred task of its earlier submission on the scheduler.
        key = f"{run.task.name}-{self.token}-{next(self._keys)}"
        client = self.client
        with self._lock:
            if self._closed:
                run.set_state(_shut_down(run))
                return
            future: DaskFuture[Any] = DaskFuture(key, client)
            self._queue.append(
                _Item(run, call, upstreams, allowed, inputs, placement, attempt, key, future)
            )
            self.native[run.future] = future
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._send_loop, name="baton-dask-submit", daemon=True
                )
                self._thread.start()
                self._collector = threading.Thread(
                    target=self._collect_loop, name="baton-dask-outcomes", daemon=True
                )
                self._collector.start()
        self._wake.set()

    def cancel(self, run: TaskRun) -> bool:
        future = self.native.pop(run.future, None)
        if future is None:
            return not self._closed
        with self._lock:
            self._cancels.append(future)
        self._wake.set()
        return True

    # -- the submitter thread -----------------------------------------------------

    def _send_loop(self) -> None:
        wake = self._wake
        while True:
            wake.wait()
            self._linger()
            with self._lock:
                wake.clear()
                items = list(self._queue)
                self._queue.clear()
                cancels, self._cancels = self._cancels, []
                stopping = self._stopping
            if items:
                self._send(items)
            if cancels:
                try:
                    client: Any = self.client
                    client.cancel(cancels)
                except Exception:  # the client closed meanwhile: nothing is left to cancel
                    pass
            del items, cancels
            if stopping:
                with self._lock:
                    if not self._queue and not self._cancels:
                        return

    def _linger(self) -> None:
        """While runs keep arriving (a loop of `.submit` calls), let them gather for up to a
        couple of milliseconds: each graph costs the scheduler far more than a run in it."""
        wake, queue = self._wake, self._queue
        deadline = time.monotonic() + _LINGER_SECONDS
        count = len(queue)
        while count and not self._stopping:
            wake.clear()
            left = deadline - time.monotonic()
            if left <= 0 or not wake.wait(min(left, _LINGER_GAP_SECONDS)):
                break
            grown = len(queue)
            if grown == count:
                break
            count = grown
        wake.set()

    def _send(self, items: list[_Item]) -> None:
        # The scheduler drops a whole graph that depends on a key it never got, so a run
        # whose upstream was not sent (cancelled first, or not picklable) is not sent either:
        # it ends here, UpstreamFailed, and so do the runs that depend on it in turn.
        unsent = self._unsent
        group: list[_Item] = []
        for item in items:
            if item.run.future._state.type in _FINAL:
                unsent.add(item.future)
                continue
            if unsent and any(type(i) is DaskFuture and i in unsent for i in item.inputs):
                unsent.add(item.future)
                self._blamed(item, None)
                continue
            if group and item.placement != group[0].placement:
                self._send_group(group)
                group = []
            group.append(item)
        if group:
            self._send_group(group)

    def _send_group(self, group: list[_Item]) -> None:
        client = self.client
        placement = group[0].placement
        extra = placement.submit_kwargs() if placement is not None else {}
        try:
            client.map(
                run_task,
                [item.call for item in group],
                [item.inputs for item in group],
                [item.attempt for item in group],
                key=[item.key for item in group],
                pure=False,
                **extra,
            )
        except Exception as exc:
            if len(group) == 1:
                self._unsendable(group[0], exc)
                return
            # Some cannot be sent (an argument that cannot be pickled): find which, by halves,
            # in order, so that upstream runs still go first.
            half = len(group) // 2
            self._send(group[:half])
            self._send(group[half:])
            return
        loop: Any = client.loop
        loop.add_callback(self._watch, group)

    def _unsendable(self, item: _Item, exc: Exception) -> None:
        from baton._runners.process import argument_pickling_error

        run = item.run
        self._unsent.add(item.future)
        self.native.pop(run.future, None)
        if self.client.status != "running":
            message = (
                f"Task run {run.name!r} could not be sent to the Dask cluster: the client is "
                f"{self.client.status} ({type(exc).__name__}: {exc})."
            )
            run.set_state(State.crashed(exc, message))
            return
        error = argument_pickling_error(
            run,
            item.call.args,
            item.call.kwargs,
            exc,
            "the Dask cluster",
            "Arguments travel to Dask workers pickled (with cloudpickle): pass something "
            "picklable instead (a path rather than an open file, settings rather than a "
            "client, lock or connection), or create the object inside the task.",
        )
        run.set_state(State.failed(error))

    # -- outcomes -----------------------------------------------------------------

    async def _watch(self, group: list[_Item]) -> None:
        """On the client's event loop: hand each run of `group` to the collector thread as
        its Dask future ends. One coroutine per graph sent and one thread wake-up per batch
        of outcomes, rather than a callback thread hop per run."""
        import asyncio

        await asyncio.gather(*[self._await_outcome(item) for item in group])

    async def _await_outcome(self, item: _Item) -> None:
        state: Any = item.future._state
        while state.status == "pending":
            await state.wait()
        self._finished.append(item)
        self._finished_wake.set()

    def _collect_loop(self) -> None:
        finished, wake = self._finished, self._finished_wake
        while True:
            wake.wait()
            wake.clear()
            while finished:
                self._report(finished.popleft())
            if self._closed and not finished:
                return

    def _report(self, item: _Item) -> None:
        try:
            self._done(item)
        except Exception as exc:  # a broken state must not stop the reports of other runs
            item.run.set_state(State.crashed(exc))

    def _done(self, item: _Item) -> None:
        run = item.run
        if run.future._state.type in _FINAL or self.native.get(run.future) is not item.future:
            return  # cancelled, or resubmitted under another key
        future: Any = item.future
        status = future.status
        if status == "finished":
            self._completed(item, future)
        elif status == "error":
            self._erred(item, future._state.exception)
        else:
            self._blamed(item, _cancel_reason(future))

    def _completed(self, item: _Item, future: DaskFuture[Any]) -> None:
        kind = future.type
        small = kind is not None and kind is not Large
        group = item.run.task.name
        key = item.key
        fetch = _Fetch(self, future, key, group, small)
        if small:
            with self._lock:
                unread = self._unread.get(group)
                if unread is None:
                    unread = self._unread[group] = {}
                unread[key] = weakref.ref(fetch, functools.partial(_forget, unread, key))
        item.run.set_state(State.completed_lazily(fetch))

    def _erred(self, item: _Item, error: BaseException | None) -> None:
        run = item.run
        if isinstance(error, RunEnded):
            if error.run_id == run.id and error.run_name == run.name:
                run.set_state(decode(error))
            else:
                self._blamed(item, None)
        elif isinstance(error, KilledWorker):
            if error.task == item.key:
                self._crashed(item, error)
            else:
                self._blamed(item, error)
        else:
            # Raised outside the engine: the call or its inputs could not be loaded there.
            detail = f"{type(error).__name__}: {error}" if error is not None else "no reason given"
            hint = (
                " Install the module on every worker (with the same version as here)."
                if isinstance(error, ImportError)
                else ""
            )
            message = f"Task run {run.name!r} could not run on its Dask worker: {detail}.{hint}"
            run.set_state(State.failed(error or BatonError(message), message))

    def _blamed(self, item: _Item, cause: BaseException | None) -> None:
        """Dask ended the run's task because of another one (a failed or crashed upstream),
        or cancelled it. Decide once the run's own upstreams are final."""
        from baton._states import upstream_failed

        run = item.run
        # Upstreams taken through allow_failure were final when the run was sent, and went
        # in as their States: they cannot be what Dask ended the run for.
        blamable = [u for u in item.upstreams if id(u) not in item.allowed]
        for upstream in blamable:
            state = upstream._state
            if state.type in _FINAL and state.type is not _COMPLETED:
                run.set_state(upstream_failed(run.name, upstream.name, state))
                return
        waiting = [u for u in blamable if u._state.type not in _FINAL]
        if waiting:
            self._after(waiting, run, lambda: self._blamed(item, cause))
        elif item.upstreams and isinstance(cause, KilledWorker):
            # An upstream's worker died and the upstream ran again, under another key:
            # run this one again on the new result.
            self.native.pop(run.future, None)
            self.prepare(run, item.call, item.upstreams, item.placement, item.attempt)
        else:
            reason = f"{type(cause).__name__}: {cause}" if cause is not None else "no reason given"
            error = cause if cause is not None else BatonError(reason)
            self._crashed(
                item,
                error,
                f"Task run {run.name!r} crashed: the Dask cluster dropped its task ({reason}).",
            )

    def _crashed(self, item: _Item, error: BaseException, message: str | None = None) -> None:
        from baton._engine import _retry_delay

        run = item.run
        if message is None:
            message = (
                f"Task run {run.name!r} crashed: the Dask worker running it died "
                f"({type(error).__name__}: {error})."
            )
        crashed = CrashedRun(message)
        crashed.__cause__ = error
        state = State.crashed(crashed, message)
        delay = _retry_delay(run, state, item.attempt, retry_crashed=True)
        if delay is None:
            run.set_state(state)
            return
        self.native.pop(run.future, None)
        run.set_state(State.pending("Retrying", f"Attempt {item.attempt + 1} after: {message}"))

        def again() -> None:
            if run.future._state.type in _FINAL:
                return  # cancelled during the delay
            try:
                self.prepare(run, item.call, item.upstreams, item.placement, item.attempt + 1)
            except Exception as exc:
                run.set_state(State.crashed(exc, f"{message} Sending it again failed: {exc}"))

        if delay:
            timer = threading.Timer(delay, again)
            timer.daemon = True
            timer.start()
        else:
            again()

    # -- results ------------------------------------------------------------------

    def load(self, fetch: _Fetch) -> Any:
        """Fetch a completed run's result, and finished small results of its task that
        nobody has read yet along with it."""
        future = fetch.future
        if future is None or self._closed:
            raise RunnerClosedError(
                "The result of this task run stayed on the Dask cluster, and task runner "
                f"'dask' ({self.label}) was shut down before anything read it. Read results "
                "(or return them from the flow) before the flow ends, or start the runner "
                "yourself (`with runner:`) to keep it running."
            )
        others: list[_Fetch] = []
        with self._lock:
            unread = self._unread.get(fetch.group)
            if unread is not None:
                unread.pop(fetch.key, None)
                if fetch.small:
                    for key in list(unread)[:PREFETCH_LIMIT]:
                        other = unread.pop(key)()
                        if other is not None and other.future is not None:
                            others.append(other)
        if not others:
            value = future.result()
        else:
            values = self._gather([future, *(o.future for o in others if o.future is not None)])
            if values is None:
                value = future.result()
            else:
                value = values[0]
                for other, loaded in zip(others, values[1:], strict=True):
                    other.value, other.loaded, other.future = unwrap(loaded), True, None
        fetch.future = None
        return unwrap(value)

    def _gather(self, futures: list[DaskFuture[Any]]) -> list[Any] | None:
        try:
            client: Any = self.client
            values: list[Any] = client.gather(futures)
        except Exception:
            return None  # one was lost meanwhile: each is then read on its own
        return values

    def fetch_unread(self) -> None:
        """Fetch the small results nobody read yet, before the client closes."""
        with self._lock:
            pending = [
                f
                for unread in self._unread.values()
                for ref in unread.values()
                if (f := ref()) is not None and f.future is not None
            ]
            self._unread.clear()
        for start in range(0, len(pending), _FETCH_CHUNK):
            chunk = pending[start : start + _FETCH_CHUNK]
            values = self._gather([f.future for f in chunk if f.future is not None])
            if values is None:
                continue
            for fetch, value in zip(chunk, values, strict=True):
                fetch.value, fetch.loaded, fetch.future = unwrap(value), True, None

    # -- ending -------------------------------------------------------------------

    def wait_idle(self) -> None:
        with self._idle:
            self._idle.wait_for(lambda: not self._inflight)

    def close(self, wait: bool) -> None:
        """Stop sending. With `wait`, runs already submitted finish first; without, they
        end CANCELLED. Futures are released; the client is left to the caller."""
        if wait:
            self.wait_idle()
            self.fetch_unread()
        with self._lock:
            self._stopping = True
            self._closed = True
            thread, collector = self._thread, self._collector
        self._wake.set()
        if thread is not None:
            thread.join()
        self._finished_wake.set()
        if collector is not None:
            collector.join()
        with self._idle:
            left = list(self._inflight.values())
        for run in left:
            run.set_state(_shut_down(run))
        self.native.clear()
        with self._lock:
            self._unread.clear()


def _forget(unread: dict[str, weakref.ref[_Fetch]], key: str, _: object) -> None:
    unread.pop(key, None)


def _shut_down(run: TaskRun) -> State:
    return State.cancelled(
        f"Task run {run.name!r} was cancelled: task runner 'dask' shut down before it finished."
    )


def _cancel_reason(future: DaskFuture[Any]) -> BaseException | None:
    state = getattr(future, "_state", None)
    reason = getattr(state, "exception", None)
    return reason if isinstance(reason, BaseException) else None
