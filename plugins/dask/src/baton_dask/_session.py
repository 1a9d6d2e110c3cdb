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
time. The same thread hears from the workers, through an event topic of the
session, which runs started (they then read RUNNING) and which were retried.

A finished future completes its run lazily: the result stays on the cluster until
something reads it. Reading one small result fetches, in the same message, the
other finished small results of the same task that nobody has read yet, so that
reading the results of a large ``.map`` one by one costs a few messages, not one
each.
"""

from __future__ import annotations

import collections
import functools
import itertools
import logging
import secrets
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any

from baton import BatonError, RunnerClosedError, State, StateType
from baton.runners import (
    FINAL_STATE_TYPES,
    RemoteResult,
    RunCall,
    unpicklable_arguments,
    upstream_failed,
    worker_lost,
)
from distributed import Future as DaskFuture
from distributed import KilledWorker

from baton_dask._batches import Batches, SentBatch
from baton_dask._items import (
    Fetch,
    Item,
    after,
    cancel_reason,
    cannot_load,
    forget,
    report_started,
    shut_down,
    watch_workers,
)
from baton_dask._options import Placement
from baton_dask._worker import Finished, Large, RunEnded, decode, run_task, unwrap

if TYPE_CHECKING:
    from baton import Future, TaskRun
    from distributed import Client

__all__ = ["Session"]

logger = logging.getLogger("baton.dask")

# How many small results one read may fetch along with its own.
PREFETCH_LIMIT = 2048
# How many results one message fetches when the runner shuts down.
_FETCH_CHUNK = 10_000
# How long the submitter waits for more runs while they keep coming, in all and between two.
_LINGER_SECONDS = 0.002
_LINGER_GAP_SECONDS = 0.0003
# How many runs cancelled before their start was heard are remembered (the oldest go
# first): most never started, and a long-lived runner must not keep them all.
_UNHEARD_KEPT = 10_000

_PENDING = StateType.PENDING
_COMPLETED = StateType.COMPLETED
_FINAL = FINAL_STATE_TYPES


class Session:
    """What a started runner holds: its client (and the cluster it started), the Dask
    future of each of its runs, and the threads that move runs and outcomes."""

    def __init__(
        self,
        client: Client | None,
        label: str,
        no_workers_timeout: float | None = None,
        batch_size: int | None = None,
    ) -> None:
        self._client = client
        self.label = label
        self.no_workers_timeout = no_workers_timeout
        self.token = secrets.token_hex(8)
        self.topic = f"baton-runs-{self.token}"
        self._subscribed = False
        # The runs sent and not ended yet, by the number in their key.
        self._items: dict[int, Item] = {}
        # Runs cancelled before their start was heard, by number: a worker may still
        # report that it started one (Dask cannot stop it then); then it is told.
        self._cancelled_unheard: dict[int, str] = {}
        self._events: collections.deque[Any] = collections.deque()
        self._keys = itertools.count(1)
        self.native: weakref.WeakKeyDictionary[Future[Any], Any] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        self._queue: collections.deque[Item] = collections.deque()
        self._cancels: list[DaskFuture[Any]] = []
        # Futures of runs that never reached the scheduler, while a queued run refers to them.
        self._unsent: weakref.WeakSet[DaskFuture[Any]] = weakref.WeakSet()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._finished: collections.deque[Item | SentBatch] = collections.deque()
        self._finished_wake = threading.Event()
        self._collector: threading.Thread | None = None
        self._watchdog: threading.Thread | None = None
        self._closed = False
        self._inflight: dict[int, TaskRun] = {}
        self._idle = threading.Condition(threading.Lock())
        self._unread: dict[str, dict[str, weakref.ref[Fetch]]] = {}
        self._batching = Batches(self, batch_size)

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
                self.enqueue(run, call, upstreams, frozenset(), [], placement, 1)
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
        call: RunCall,
        upstreams: list[Future[Any]],
        placement: Placement | None,
        attempt: int,
    ) -> None:
        """Work out each upstream's input and send the run, or wait for the upstreams that
        must be final first: those taken through `allow_failure` (Dask would not run a
        task whose dependency failed), and those not sent to Dask yet."""
        allowed = call.allowed_upstreams()
        inputs: list[Any] = []
        waiting: list[Future[Any]] = []
        native = self.native
        # One upstream waiting in the batches (a chain) goes alone, for its Dask future;
        # several (a fan-in) go in their batches, and this run once they have ended.
        claim = sum(1 for u in upstreams if u.task_run_id in self._batching.waiting) <= 1
        for index, upstream in enumerate(upstreams):
            state = upstream.task_run.state
            final = state.type in _FINAL
            mine = native.get(upstream)
            if allowed and index in allowed:
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
            if mine is None and not final and claim:
                # Waiting in the batches: it goes alone, now, so that this run can
                # depend on its Dask future rather than wait for its end.
                mine = self._batching.claim(upstream)
            if mine is not None:
                inputs.append(mine)
            elif final:
                inputs.append(state)
            else:
                waiting.append(upstream)
        if waiting:
            after(waiting, run, lambda: self.prepare(run, call, upstreams, placement, attempt))
        else:
            self.enqueue(run, call, upstreams, allowed, inputs, placement, attempt)

    def key_of(self, run: TaskRun, number: int) -> str:
        """Dask key of submission `number`: new each time, or a resent run meets its erred task."""
        return f"{run.task.name}-{self.token}-{number}"

    def enqueue(
        self,
        run: TaskRun,
        call: RunCall,
        upstreams: list[Future[Any]],
        allowed: frozenset[int],
        inputs: list[Any],
        placement: Placement | None,
        attempt: int,
    ) -> None:
        if run.state.type in _FINAL:
            return  # cancelled while it waited
        number = next(self._keys)
        client = self.client
        shut = False
        batching = self._batching
        with self._lock:
            if self._closed:
                shut = True
            elif batching.wants(run, upstreams):
                # Sent in a batch by the submitter thread: its future comes then.
                item = Item(
                    run, call, upstreams, allowed, inputs, placement, attempt, "", number, None
                )
                self._items[number] = item
                batching.put(item)
                if self._thread is None:
                    self._start_threads(client)
            else:
                key = self.key_of(run, number)
                future: DaskFuture[Any] = DaskFuture(key, client)
                item = Item(
                    run, call, upstreams, allowed, inputs, placement, attempt, key, number, future
                )
                self._queue.append(item)
                self._items[number] = item
                self.native[run.future] = future
                if self._thread is None:
                    self._start_threads(client)
        if shut:
            run.set_state(shut_down(run))
            return
        if not self._wake.is_set():  # set already: the submitter thread takes it anyway
            self._wake.set()

    def _start_threads(self, client: Client) -> None:
        try:
            subscribe: Any = client.subscribe_topic
            subscribe(self.topic, self._on_event)
            self._subscribed = True
        except Exception:  # runs then read PENDING until they end; nothing else changes
            logger.debug("Could not subscribe to the reports of runs that start", exc_info=True)
        self._thread = threading.Thread(
            target=self._send_loop, name="baton-dask-submit", daemon=True
        )
        self._thread.start()
        self._collector = threading.Thread(
            target=self._collect_loop, name="baton-dask-outcomes", daemon=True
        )
        self._collector.start()
        if self.no_workers_timeout is not None:
            self._watchdog = threading.Thread(
                target=functools.partial(watch_workers, self),
                name="baton-dask-workers",
                daemon=True,
            )
            self._watchdog.start()

    def cancel(self, run: TaskRun) -> bool:
        """Drop a run's place in the batches, or its Dask task. The caller gives the run
        its final state (its future's cancel() did; the no-worker watch does next): a
        run whose Dask task went away without one would be waited for for ever."""
        with self._lock:
            if self._batching.cancel(run):
                return True
        if type(self.native.get(run.future)) is tuple:
            # In a batch already sent (`TaskRun.mark_sent`): it runs on to its end there.
            return False
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
                try:
                    self._send(items)
                except BaseException:  # a done callback that raised: others still go out
                    logger.exception("Sending runs to the Dask cluster raised")
            if len(self._batching):
                try:
                    self._batching.send(self.client)
                except BaseException:
                    logger.exception("Sending runs to the Dask cluster raised")
            if cancels:
                try:
                    client: Any = self.client
                    client.cancel(cancels)
                except Exception:  # the client closed meanwhile: nothing is left to cancel
                    pass
            del items, cancels
            if stopping:
                with self._lock:
                    if not self._queue and not self._cancels and not len(self._batching):
                        return

    def _linger(self) -> None:
        """While runs keep arriving (a loop of `.submit` calls), let them gather for up to a
        couple of milliseconds: each graph costs the scheduler far more than a run in it."""
        wake, queue, batching = self._wake, self._queue, self._batching
        deadline = time.monotonic() + _LINGER_SECONDS
        count = len(queue) + len(batching)
        # Slept, not waited on `wake`: woken by every `.submit`, this thread would take the
        # GIL from the submitting one once per run.
        while count and not self._stopping:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            time.sleep(min(left, _LINGER_GAP_SECONDS))
            grown = len(queue) + len(batching)
            if grown == count:
                break
            count = grown
        wake.set()

    def _send(self, items: list[Item]) -> None:
        # The scheduler drops a whole graph that depends on a key it never got, so a run
        # whose upstream was not sent (cancelled first, or not picklable) is not sent either:
        # it ends here, UpstreamFailed, and so do the runs that depend on it in turn.
        unsent = self._unsent
        group: list[Item] = []
        for item in items:
            if item.run.state.type in _FINAL:
                unsent.add(item.future)
                self._batching.ended(item)
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

    def _send_group(self, group: list[Item]) -> None:
        client = self.client
        placement = group[0].placement
        extra = placement.submit_kwargs() if placement is not None else {}
        try:
            client.map(
                run_task,
                [item.call for item in group],
                [item.inputs for item in group],
                [item.attempt.number for item in group],
                [self.topic] * len(group),
                [item.number for item in group],
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

    def _unsendable(self, item: Item, exc: Exception) -> None:
        run = item.run
        self._batching.ended(item)
        self._unsent.add(item.future)
        self.native.pop(run.future, None)
        self._items.pop(item.number, None)
        if self.client.status != "running":
            message = (
                f"Task run {run.name!r} could not be sent to the Dask cluster: the client is "
                f"{self.client.status} ({type(exc).__name__}: {exc})."
            )
            run.set_state(State.crashed(exc, message))
            return
        error = unpicklable_arguments(
            run,
            exc,
            "the Dask cluster",
            "Arguments travel to Dask workers pickled (with cloudpickle): pass something "
            "picklable instead (a path rather than an open file, settings rather than a "
            "client, lock or connection), or create the object inside the task.",
            item.call.args,
            item.call.kwargs,
        )
        run.set_state(State.failed(error))

    # -- outcomes -----------------------------------------------------------------

    async def _watch(self, group: list[Item]) -> None:
        """On the client's event loop: hand each run of `group` to the collector thread as
        its Dask future ends. One coroutine per graph sent and one thread wake-up per batch
        of outcomes, rather than a callback thread hop per run."""
        import asyncio

        await asyncio.gather(*[self._await_outcome(item) for item in group])

    async def _await_outcome(self, item: Item) -> None:
        state: Any = item.future._state
        while state.status == "pending":
            await state.wait()
        self._finished.append(item)
        self._finished_wake.set()

    def _on_event(self, event: Any) -> None:
        """On the client's event loop: workers report runs that started (and retries)."""
        self._events.append(event[1])
        self._finished_wake.set()

    def _collect_loop(self) -> None:
        finished, events, wake = self._finished, self._events, self._finished_wake
        while True:
            wake.wait()
            wake.clear()
            while events:
                report_started(self, events.popleft())
            while finished:
                # What a worker reported of a run comes before the run's end.
                while events:
                    report_started(self, events.popleft())
                self._report(finished.popleft())
            if self._closed and not finished:
                return

    def _report(self, item: Any) -> None:
        if type(item) is SentBatch:
            self._batching.report(item)
            return
        self._items.pop(item.number, None)
        if not item.started and item.run.state.is_cancelled():
            unheard = self._cancelled_unheard
            unheard[item.number] = item.run.name
            if len(unheard) > _UNHEARD_KEPT:
                del unheard[next(iter(unheard))]
        self._batching.ended(item)
        try:
            self._done(item)
        except BaseException as exc:
            self._report_failed(item, exc)

    def _report_failed(self, item: Item, exc: BaseException) -> None:
        # A done callback (or an observer) that raised, even SystemExit: the reports of
        # other runs must go on. If the run did not end, it crashes, with that error.
        logger.exception("Reporting the end of task run %r raised", item.run.name)
        try:
            if item.run.state.type not in _FINAL:
                item.run.set_state(State.crashed(exc))
        except BaseException:
            logger.exception("Reporting the end of task run %r raised", item.run.name)

    def _done(self, item: Item) -> None:
        run = item.run
        if run.state.type in _FINAL or self.native.get(run.future) is not item.future:
            return  # cancelled, or resubmitted under another key
        future: Any = item.future
        status = future.status
        if status == "finished":
            self._completed(item, future)
        elif status == "error":
            self._erred(item, future._state.exception)
        else:
            self._blamed(item, cancel_reason(future))

    def _completed(self, item: Item, future: DaskFuture[Any]) -> None:
        kind = future.type
        run = item.run
        if kind is Finished or kind is None:
            # Finished: failures of runs it submitted come with the value, to report now.
            # None: the type of the result could not be loaded here; nor may the result.
            self._fetch_now(item, future)
            return
        small = kind is not Large
        group = run.task.name
        key = item.key
        fetch = Fetch(self, future, key, group, small, run.name, run.task.name)
        if small:
            with self._lock:
                unread = self._unread.get(group)
                if unread is None:
                    unread = self._unread[group] = {}
                unread[key] = weakref.ref(fetch, functools.partial(forget, unread, key))
        run.set_state(State.completed_lazily(fetch))

    def _fetch_now(self, item: Item, future: DaskFuture[Any]) -> None:
        run = item.run
        try:
            value = future.result()
        except Exception as exc:
            run.finish(RemoteResult(State.failed(cannot_load(run.name, run.task.name, exc))))
            return
        if type(value) is Finished:
            run.finish(RemoteResult(State.completed(value.value), unhandled=value.unhandled))
        else:
            run.set_state(State.completed(unwrap(value)))

    def _erred(self, item: Item, error: BaseException | None) -> None:
        run = item.run
        if isinstance(error, RunEnded):
            if error.run_id == run.id and error.run_name == run.name:
                run.finish(decode(error, run))
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

    def _blamed(self, item: Item, cause: BaseException | None) -> None:
        """Dask ended the run's task because of another one (a failed or crashed upstream),
        or cancelled it. Decide once the run's own upstreams are final."""
        run = item.run
        blamable = item.blamable()
        for upstream in blamable:
            state = upstream.task_run.state
            if state.type in _FINAL and state.type is not _COMPLETED:
                run.set_state(upstream_failed(run.name, upstream.name, state))
                return
        waiting = [u for u in blamable if u.task_run.state.type not in _FINAL]
        if waiting:
            after(waiting, run, lambda: self._blamed(item, cause))
        elif item.upstreams and isinstance(cause, KilledWorker):
            # An upstream's worker died and the upstream ran again, under another key:
            # run this one again on the new result.
            self.native.pop(run.future, None)
            self.prepare(run, item.call, item.upstreams, item.placement, item.attempt.number)
        else:
            reason = f"{type(cause).__name__}: {cause}" if cause is not None else "no reason given"
            error = cause if cause is not None else BatonError(reason)
            self._crashed(
                item,
                error,
                f"Task run {run.name!r} crashed: the Dask cluster dropped its task ({reason}).",
            )

    def _crashed(self, item: Item, error: BaseException, message: str | None = None) -> None:
        """The run's worker died (or Dask dropped its task): retried as the task's retries
        allow (`Attempts`), continuing its count of attempts."""
        run = item.run
        if message is None:
            message = (
                f"Task run {run.name!r} crashed: the Dask worker running it died "
                f"({type(error).__name__}: {error})."
            )
        state = worker_lost(message, error)
        attempts = item.attempt
        retry = attempts.after(state)
        if retry is None:
            run.set_state(attempts.finish(state))
            return
        self.native.pop(run.future, None)
        run.set_state(retry.state)

        def again() -> None:
            if run.state.type in _FINAL:
                return  # cancelled during the delay
            try:
                self.prepare(run, item.call, item.upstreams, item.placement, retry.attempt)
            except Exception as exc:
                run.set_state(State.crashed(exc, f"{message} Sending it again failed: {exc}"))

        if retry.delay:
            timer = threading.Timer(retry.delay, again)
            timer.daemon = True
            timer.start()
        else:
            again()

    # -- results ------------------------------------------------------------------

    def load(self, fetch: Fetch) -> Any:
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
        others: list[Fetch] = []
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
            value = self._own(fetch, future)
        else:
            values = self._gather([future, *(o.future for o in others if o.future is not None)])
            if values is None:
                value = self._own(fetch, future)
            else:
                value = values[0]
                for other, loaded in zip(others, values[1:], strict=True):
                    other.value, other.loaded, other.future = unwrap(loaded), True, None
        fetch.future = None
        return unwrap(value)

    @staticmethod
    def _own(fetch: Fetch, future: DaskFuture[Any]) -> Any:
        """One result, read on its own; one that came back but cannot be rebuilt here
        raises an error that names the run and says so."""
        try:
            return future.result()
        except Exception as exc:
            status = getattr(future, "status", None)
            if status != "finished":
                raise
            raise cannot_load(fetch.run_name, fetch.task_name, exc) from exc

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
        if self._subscribed:
            self._subscribed = False
            try:
                client: Any = self.client
                client.unsubscribe_topic(self.topic)
            except Exception:  # the client is closing: the subscription goes with it
                pass
        self._wake.set()
        if thread is not None:
            thread.join()
        self._finished_wake.set()
        if collector is not None:
            collector.join()
        with self._idle:
            left = list(self._inflight.values())
        for run in left:
            run.set_state(shut_down(run))
        self.native.clear()
        self._items.clear()
        with self._lock:
            self._unread.clear()
