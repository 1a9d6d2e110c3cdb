"""A session's batches: runs that are ready together go to Dask packed in one Dask task.

A run whose upstream runs have all ended (or that has none) waits in a
`baton.runners.BatchQueue`; the submitter thread takes batches from it as slots of
the cluster free up (two per worker thread), sized from how long the task's runs
take. A batch of one goes as a run alone does (`run_task`); a larger one as one Dask
task, `run_batch_task`, whose result (`BatchValues`) stays on the cluster, plus a
tiny task that hands the driver its outcomes. A downstream run takes a batched
upstream's value as ``(PICK, index, batch future)``, which Dask resolves on the
worker.

When a batch's worker dies, the run that was executing (the last one the worker
reported started) crashes, as it would alone; the others are sent again, and that
crash is not counted as one of their attempts. When no run of it was reported
started, each goes again alone, so that a run that kills its worker does so alone.
"""

from __future__ import annotations

from collections.abc import Hashable
from functools import partial
from typing import TYPE_CHECKING, Any, final

from baton import RunnerClosedError, State
from baton.runners import (
    FINAL_STATE_TYPES,
    Batch,
    BatchQueue,
    RemoteResult,
    batch_size_of,
)
from distributed import KilledWorker

from baton_dask._items import cancel_reason, cannot_load
from baton_dask._worker import (
    PICK,
    RunEnded,
    Runs,
    batch_outcomes,
    decode,
    pick_value,
    run_batch_task,
)

if TYPE_CHECKING:
    from baton import Future, TaskRun
    from distributed import Client
    from distributed import Future as DaskFuture

    from baton_dask._items import Item
    from baton_dask._session import Session

__all__ = ["Batches", "SentBatch"]

_FINAL = FINAL_STATE_TYPES
_INLINE, _HELD, _FINISHED, _ENDED = 0, 1, 2, 3
# Batches out at once per worker thread: each has its next one at hand.
_DEPTH = 2
_SLOTS_EVERY = 2.0  # seconds between two looks at how many worker threads there are


@final
class SentBatch:
    """A batch of more than one run, as sent: its Dask future and its outcomes' future."""

    __slots__ = ("batch", "future", "outcomes", "read")

    def __init__(
        self, batch: Batch[Item], future: DaskFuture[Any], outcomes: DaskFuture[Any]
    ) -> None:
        self.batch = batch
        self.future = future
        self.outcomes = outcomes
        self.read: Any = None  # the outcomes, fetched on the client's event loop


@final
class _Held:
    """Loads a batched run's value that stayed on the cluster, when its State is read."""

    __slots__ = ("future", "index", "run_name", "session", "task_name")

    def __init__(self, session: Session, future: DaskFuture[Any], index: int, run: TaskRun):
        self.session = session
        self.future: DaskFuture[Any] | None = future
        self.index = index
        self.run_name = run.name
        self.task_name = run.task.name

    def __call__(self) -> Any:
        future = self.future
        if future is None or self.session._closed:
            raise RunnerClosedError(
                "The result of this task run stayed on the Dask cluster, and task runner "
                f"'dask' ({self.session.label}) was shut down before anything read it. Read "
                "results (or return them from the flow) before the flow ends, or start the "
                "runner yourself (`with runner:`) to keep it running."
            )
        client: Any = self.session.client
        picked = client.submit(pick_value, future, self.index, pure=False)
        try:
            value = picked.result()
        except Exception as exc:
            if picked.status != "finished":
                raise
            raise cannot_load(self.run_name, self.task_name, exc) from exc
        self.future = None
        return value


class Batches:
    """The runs of a session that wait to go in batches, and the batches out."""

    def __init__(self, session: Session, batch_size: int | None) -> None:
        self.session = session
        self.default = batch_size
        self.queue: BatchQueue[Item] = BatchQueue(_DEPTH)
        self.waiting: dict[int, Item] = {}
        self.alone: set[int] = set()

    def wants(self, run: TaskRun, upstreams: list[Future[Any]]) -> bool:
        """Whether `run` goes through the batches: it may be batched, and it is ready."""
        if batch_size_of(run.task, self.default) == 1:
            return False
        return all(u.task_run.state.type in _FINAL for u in upstreams)

    def put(self, item: Item) -> None:
        run = item.run
        self.waiting[run.id] = item
        alone = run.id in self.alone
        if alone:
            self.alone.discard(run.id)
        self.queue.put(item, _key(item), batch_size_of(run.task, self.default), alone=alone)

    def cancel(self, run: TaskRun) -> bool:
        item = self.waiting.pop(run.id, None)
        return item is not None and self.queue.discard(item)

    def __len__(self) -> int:
        return len(self.queue)

    def claim(self, upstream: Future[Any]) -> Any:
        """The Dask future of a run still waiting in the batches, which a downstream run
        needs now: the run leaves the batches and goes alone, ahead of the downstream
        run. None when it is not waiting here (any more)."""
        from distributed import Future as DaskFuture

        session = self.session
        item = self.waiting.get(upstream.task_run_id)
        if item is None or not self.queue.discard(item):
            return None
        self.waiting.pop(upstream.task_run_id, None)
        run = item.run
        client = session.client
        item.key = session.key_of(run, item.number)
        future = item.future = DaskFuture(item.key, client)
        session.native[run.future] = future
        with session._lock:
            session._queue.append(item)
        session._wake.set()
        return future

    # -- the submitter thread -----------------------------------------------------------

    def send(self, client: Client) -> None:
        """Send the batches there are slots for."""
        if not len(self.queue):
            return
        session = self.session
        if session._stopping:
            # Shutting down without waiting (with waiting, nothing is left): runs that
            # wait here never go; the session ends them.
            for batch in self.queue.take(everything=True):
                for item in batch.items:
                    self.waiting.pop(item.run.id, None)
            return
        self.queue.follow_workers(partial(_threads, client), _DEPTH, _SLOTS_EVERY)
        singles: list[Item] = []
        for batch in self.queue.take():
            items = []
            several = len(batch.items) > 1
            for item in batch.items:
                self.waiting.pop(item.run.id, None)
                # A batch's runs wait on the worker behind one another, where Dask
                # cannot drop them: once sent, cancel() leaves them to run.
                going = item.run.mark_sent() if several else item.run.state.type not in _FINAL
                if going:
                    items.append(item)
                else:
                    session._items.pop(item.number, None)  # cancelled while it waited
            batch.items = items
            if not items:
                self.queue.done(batch, ())
            elif len(items) == 1:
                singles.append(self._single(client, batch, items[0]))
            else:
                self._send_batch(client, batch)
        if singles:
            # In one graph, as runs sent alone go: Dask spreads them over its workers.
            session._send(singles)

    def _single(self, client: Client, batch: Batch[Item], item: Item) -> Item:
        """`item` made ready to go as a run alone does."""
        from distributed import Future as DaskFuture

        session = self.session
        run = item.run
        item.key = session.key_of(run, item.number)
        item.future = DaskFuture(item.key, client)
        item.batch = batch
        session.native[run.future] = item.future
        return item

    def _send_batch(self, client: Client, batch: Batch[Item]) -> None:
        session = self.session
        items = batch.items
        first = items[0]
        placement = first.placement
        extra = placement.submit_kwargs() if placement is not None else {}
        number = next(session._keys)
        key = f"baton-batch-{first.run.task.name}-{session.token}-{number}"
        submit: Any = client.submit
        try:
            runs = Runs.pack(
                [item.call for item in items],
                [item.attempt.number for item in items],
                [item.number for item in items],
            )
            inputs = [item.inputs for item in items]
            future = submit(
                run_batch_task,
                runs,
                inputs if any(inputs) else None,
                session.topic,
                key=key,
                pure=False,
                **extra,
            )
        except Exception:
            # One cannot be sent (an argument that cannot be pickled): alone, each run
            # that cannot is found and fails with an error that names it.
            self.queue.done(batch, ())
            self.session._send([self._single(client, Batch(batch.key, [i]), i) for i in items])
            return
        outcomes = submit(batch_outcomes, future, key=f"{key}-outcomes", pure=False, **extra)
        sent = SentBatch(batch, future, outcomes)
        for index, item in enumerate(items):
            item.batch = sent
            item.index = index
            item.future = future
            session.native[item.run.future] = (PICK, index, future)
        loop: Any = client.loop
        loop.add_callback(self._watch, sent)

    async def _watch(self, sent: SentBatch) -> None:
        state: Any = sent.outcomes._state
        while state.status == "pending":
            await state.wait()
        session = self.session
        if state.status == "finished":
            # Fetched here, where fetches of several batches overlap.
            try:
                client: Any = session.client
                sent.read = await client.gather(sent.outcomes, asynchronous=True)
            except Exception:  # fetched again, and its error reported, by `report`
                sent.read = None
        session._finished.append(sent)
        session._finished_wake.set()

    # -- the collector thread -------------------------------------------------------------

    def ended(self, item: Item) -> None:
        """A run sent alone from the batches ended: free its slot."""
        batch = item.batch
        if isinstance(batch, Batch):
            item.batch = None
            self.queue.done(batch)
            self.session._wake.set()

    def report(self, sent: SentBatch) -> None:
        """A batch ended: end its runs, from the outcomes its task sent."""
        session = self.session
        outcomes: Any = sent.outcomes
        items = sent.batch.items
        for item in items:
            session._items.pop(item.number, None)
        if outcomes.status == "finished":
            try:
                entries, seconds = sent.read if sent.read is not None else outcomes.result()
                sent.read = None
            except Exception as exc:
                self.queue.done(sent.batch, ())
                session._wake.set()
                for item in items:
                    session._erred(item, exc)
                return
            self.queue.done(sent.batch, seconds)
            session._wake.set()
            for item, entry in zip(items, entries, strict=True):
                try:
                    self._settle(sent, item, entry)
                except BaseException as exc:
                    session._report_failed(item, exc)
            return
        self.queue.done(sent.batch, ())
        session._wake.set()
        error = cancel_reason(outcomes)
        if isinstance(error, KilledWorker):
            self._crashed(sent, error)
            return
        for item in items:
            if not self._current(item):
                continue
            if outcomes.status == "error":
                session._erred(item, error)
            else:
                session._blamed(item, error)

    def _current(self, item: Item) -> bool:
        run = item.run
        if run.state.type in _FINAL:
            return False
        native = self.session.native.get(run.future)
        return type(native) is tuple and native[2] is item.future and native[1] == item.index

    def _settle(self, sent: SentBatch, item: Item, entry: Any) -> None:
        if not self._current(item):
            return  # cancelled, or sent again
        run = item.run
        kind = entry[0]
        if kind == _INLINE:
            run.set_state(State.completed(entry[1]))
        elif kind == _HELD:
            run.set_state(State.completed_lazily(_Held(self.session, sent.future, item.index, run)))
        elif kind == _FINISHED:
            run.finish(RemoteResult(State.completed(entry[1]), unhandled=entry[2]))
        else:
            error: RunEnded = entry[1]
            if error.run_id == run.id and error.run_name == run.name:
                run.finish(decode(error, run))
            else:
                self.session._blamed(item, None)

    def _crashed(self, sent: SentBatch, error: KilledWorker) -> None:
        """The batch's worker died: the run it was executing crashes; the others go again."""
        session = self.session
        batch = sent.batch
        started = [i for i, item in enumerate(batch.items) if item.started]
        crashed, again = batch.after_crash(started[-1] if started else None)
        for item in again:
            if not self._current(item):
                continue
            run = item.run
            session.native.pop(run.future, None)
            if crashed is None:
                self.alone.add(run.id)
            session.prepare(run, item.call, item.upstreams, item.placement, item.attempt.number)
        if crashed is not None and self._current(crashed):
            session.native.pop(crashed.run.future, None)
            self.alone.add(crashed.run.id)
            session._crashed(crashed, error)


def _key(item: Item) -> Hashable:
    task = item.run.task
    placement: Any = item.placement
    try:
        hash(placement)
    except TypeError:
        placement = repr(placement)
    return (id(task), task.name, placement)


def _threads(client: Client) -> int:
    """The worker threads of the cluster."""
    ask: Any = client
    return int(sum(ask.nthreads().values()))
