"""A run on its way through the `ray` runner's driver (`Job`), and the small pieces the
driver and its batches share: the kinds of Ray task a run goes as, waiting for an
ObjectRef without a Future per run, and cancelling a Ray task."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, final

import ray

if TYPE_CHECKING:
    import concurrent.futures as cf

    from baton import Future
    from baton.runners import TaskRun

__all__ = ["ATTEMPT", "TIMED", "WHOLE", "Job", "cancel_task", "freeze", "when_done"]

logger = logging.getLogger("baton")

WHOLE, ATTEMPT, TIMED = "whole", "attempt", "timed"
"""A run with neither retries nor a timeout goes whole (every attempt on the worker); one
with retries one attempt at a time; one with a timeout as a timed, streaming attempt."""


def when_done(ref: Any, callback: Any) -> None:
    """Call `callback(value or error)` from Ray's thread once `ref` is ready."""
    on_completed = getattr(ref, "_on_completed", None)
    if on_completed is not None:
        # What ObjectRef.future() builds on, without a concurrent Future per run.
        on_completed(callback)
        return

    def done(future: cf.Future[Any]) -> None:
        try:
            value = future.result()
        except BaseException as exc:
            value = exc
        callback(value)

    ref.future().add_done_callback(done)


def freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return tuple(sorted((k, freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    return value


@final
class Job:
    """One run on its way through Ray (queued here, in Ray, or parked)."""

    __slots__ = (
        "attempt",
        "batch",
        "call",
        "deadline",
        "gen",
        "head",
        "items",
        "kind",
        "outcome_ref",
        "ray_options",
        "remote",
        "run",
        "stop",
        "unhandled",
        "upstreams",
        "value_ref",
    )

    def __init__(self, run: TaskRun, upstreams: list[Future[Any]], kind: str, remote: Any) -> None:
        self.run = run
        self.upstreams = upstreams
        self.kind = kind
        self.remote = remote
        self.head: Any = None
        self.call: Any = None
        self.unhandled: tuple[Any, ...] = ()  # left failing by earlier attempts
        self.attempt = 1
        self.outcome_ref: Any = None
        self.value_ref: Any = None
        self.gen: Any = None
        self.items = 0
        self.deadline: float | None = None
        self.stop: str | None = None  # why the driver stopped it: timeout, cancel, shutdown
        self.batch: Any = None  # the batch it went in, or whose slot it holds
        # ObjectRefs of upstream runs still in Ray when it went, which Ray passes in.
        self.ray_options: Mapping[str, Any] = {}

    def in_sent_batch(self) -> bool:
        """Whether the run went to Ray inside a batch's one task (not as a run alone)."""
        return self.batch is not None and self.outcome_ref is None and self.gen is None

    def cancel_in_ray(self) -> None:
        if self.in_sent_batch():
            return  # in a batch: its other runs go on, this one's outcome is dropped
        handle = self.gen if self.kind == TIMED else self.outcome_ref
        if handle is None:
            return
        cancel_task(handle, self.run)


def cancel_task(handle: Any, run: TaskRun) -> None:
    try:
        ray.cancel(handle, force=True)
    except Exception:
        logger.debug("ray.cancel of %r failed", run, exc_info=True)
