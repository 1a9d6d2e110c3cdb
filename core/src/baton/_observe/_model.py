"""A finished flow run as the trace and the report show it: its task runs, their
attempts, the workers they ran on, and the lanes the attempts are drawn in.

Built once, when the flow run ends, from the events its `Recorder` collected.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from operator import attrgetter, itemgetter
from typing import TYPE_CHECKING, Any

from baton._task import NAME_HASH as _NAME_HASH
from baton._task import default_run_name

if TYPE_CHECKING:
    from baton._flow import FlowRun
    from baton._observe import Recorder
    from baton._states import State

__all__ = ["Attempt", "FlowRecord", "RunRecord"]

UNKNOWN_WORKER = "unknown worker"
"""The worker of attempts whose runner did not say where they ran."""

# Runners that mark a run RUNNING when they send it to a worker, which then runs what
# it was sent one run at a time: an attempt queued there starts when the one before
# it on that worker ended.
_QUEUEING_RUNNERS = frozenset({"process"})

# The last part of default run names (see `default_run_name`), made once.
_SUFFIXES = tuple(f"{code:03x}" for code in range(0x1000))


@dataclass(slots=True)
class Attempt:
    """One attempt of a run: from its RUNNING to its Retrying or final state."""

    run_id: int
    number: int
    start: float
    end: float
    worker: str
    outcome: str
    lane: int = 0


@dataclass(slots=True)
class RunRecord:
    """One task run of the flow run."""

    id: int
    name: str
    task: str
    state: str
    """The final state's type: ``COMPLETED``, ``FAILED``, ``CRASHED``, ``CANCELLED``."""
    state_name: str
    """The final state's name (``TimedOut``, ``UpstreamFailed``...)."""
    message: str | None
    upstream_ids: tuple[int, ...]
    parent_id: int | None
    retries: int
    traceback: str | None
    end: float
    attempts: list[Attempt]
    retry_messages: list[str]

    @property
    def duration(self) -> float:
        """Seconds from the start of its first attempt to its end (0 if it never ran)."""
        return self.end - self.attempts[0].start if self.attempts else 0.0


@dataclass
class FlowRecord:
    """A finished flow run, with everything the trace and the report show."""

    flow: str
    flow_run: str
    state: str
    message: str | None
    start: float
    end: float
    runner: str
    runner_options: dict[str, str]
    runs: dict[int, RunRecord]
    attempts: list[Attempt]
    workers: list[str]
    """Every worker, in the order their first attempt started."""
    lanes: dict[str, int]
    """How many lanes each worker's attempts are drawn in."""

    @classmethod
    def build(cls, flow_run: FlowRun, state: State, recorder: Recorder) -> FlowRecord:
        """The record of `flow_run` from what its `Recorder` collected."""
        runner = flow_run.task_runner
        end = flow_run.end_time or time.time()
        built = None if recorder.retried else _single_attempts(recorder)
        runs, attempts = built if built is not None else _runs_and_attempts(recorder, end)
        if runner.name in _QUEUEING_RUNNERS:
            _queue_on_workers(attempts)
        # By start, the longest first among those starting together (a parent before
        # the nested run it started at once): two stable sorts on C-level keys.
        attempts.sort(key=attrgetter("end"), reverse=True)
        attempts.sort(key=attrgetter("start"))
        workers = list(dict.fromkeys(a.worker for a in attempts))
        lanes = _assign_lanes(attempts, runs)
        return cls(
            flow=flow_run.flow.name,
            flow_run=flow_run.name,
            state=state.name,
            message=state.message,
            start=flow_run.start_time,
            end=end,
            runner=runner.name,
            runner_options=_options_of(runner),
            runs=runs,
            attempts=attempts,
            workers=workers,
            lanes=lanes,
        )


def _single_attempts(recorder: Recorder) -> tuple[dict[int, RunRecord], list[Attempt]] | None:
    """Runs and attempts when no run was retried: each run's attempt goes from its
    first RUNNING to its final state. None if some run has no final state (the
    general path draws it to the flow's end)."""
    flat = recorder.starts
    # Read from the last to the first: the first RUNNING of a run wins (later ones
    # repeat it).
    times_and_workers = zip(reversed(flat[1::3]), reversed(flat[2::3]), strict=True)
    started: dict[int, tuple[float, str | None]] = dict(
        zip(reversed(flat[0::3]), times_and_workers, strict=True)
    )
    done = recorder.completed
    completed = sorted(
        zip(done[0::4], done[1::4], done[2::4], done[3::4], strict=True), key=itemgetter(0)
    )
    names, links, completed_names = recorder.names, recorder.links, recorder.completed_names
    tasks: dict[Any, tuple[str, str, int]] = {}
    runs: dict[int, RunRecord] = {}
    attempts: list[Attempt] = []
    add = attempts.append
    get_start = started.get
    for run_id, ended, worker, task in completed:
        if run_id in runs:  # a second final state: the first one stands
            continue
        about = tasks.get(task)
        if about is None:
            about = tasks[task] = _about(task)
        name = names.get(run_id) if names else None
        if name is None:
            name = about[0] + _SUFFIXES[(run_id * _NAME_HASH) & 0xFFF]
        upstreams, parent = links.get(run_id, _NO_LINKS) if links else _NO_LINKS
        state_name = (
            completed_names.get(run_id, _COMPLETED_NAME) if completed_names else _COMPLETED_NAME
        )
        start = get_start(run_id)
        if start is None:  # a run that completed ran, if its start was not heard
            attempt = Attempt(run_id, 1, ended, ended, worker or UNKNOWN_WORKER, state_name, 0)
        else:
            begun = start[0]
            attempt = Attempt(
                run_id,
                1,
                begun if begun <= ended else ended,
                ended,
                start[1] or worker or UNKNOWN_WORKER,
                state_name,
                0,
            )
        add(attempt)
        runs[run_id] = RunRecord(
            run_id,
            name,
            about[1],
            "COMPLETED",
            state_name,
            None,
            upstreams,
            parent,
            about[2],
            None,
            ended,
            [attempt],
            [],
        )
    if recorder.ends:
        for final in sorted(recorder.ends, key=itemgetter(0)):
            (
                run_id,
                ended,
                worker,
                state_name,
                kind,
                name,
                task_name,
                retries,
                upstreams,
                parent,
                message,
                text,
            ) = final
            if run_id in runs:
                continue
            start = get_start(run_id)
            made: list[Attempt] = []
            if start is not None:
                begun = start[0]
                where = start[1] or worker
                made.append(_attempt(run_id, 1, min(begun, ended), ended, where, state_name))
            elif _ran(kind, state_name, worker, made):
                made.append(_attempt(run_id, 1, ended, ended, worker, state_name))
            attempts.extend(made)
            runs[run_id] = RunRecord(
                run_id,
                name,
                task_name,
                kind,
                state_name,
                message,
                upstreams,
                parent,
                retries,
                text,
                ended,
                made,
                [],
            )
        runs = dict(sorted(runs.items()))
    if not started.keys() <= runs.keys():
        return None
    return runs, attempts


_NO_LINKS: tuple[tuple[int, ...], None] = ((), None)
_COMPLETED_NAME = "Completed"


def _about(task: Any) -> tuple[str, str, int]:
    """What the record keeps of a task: the start of its runs' default names, its name,
    and the retries it allows."""
    return default_run_name(task.name, 0)[:-3], task.name, task.options.retries


def _completed_events(recorder: Recorder) -> list[tuple[Any, ...]]:
    """The COMPLETED states of `recorder`, each as a final state of `Recorder.ends`."""
    done = recorder.completed
    names, links, completed_names = recorder.names, recorder.links, recorder.completed_names
    tasks: dict[Any, tuple[str, str, int]] = {}
    events: list[tuple[Any, ...]] = []
    completed = zip(done[0::4], done[1::4], done[2::4], done[3::4], strict=True)
    for run_id, ended, worker, task in completed:
        about = tasks.get(task)
        if about is None:
            about = tasks[task] = _about(task)
        name = names.get(run_id) or about[0] + _SUFFIXES[(run_id * _NAME_HASH) & 0xFFF]
        upstreams, parent = links.get(run_id, _NO_LINKS)
        state_name = completed_names.get(run_id, _COMPLETED_NAME)
        events.append(
            (
                run_id,
                ended,
                worker,
                state_name,
                "COMPLETED",
                name,
                about[1],
                about[2],
                upstreams,
                parent,
                None,
                None,
            )
        )
    return events


def _runs_and_attempts(
    recorder: Recorder, flow_end: float
) -> tuple[dict[int, RunRecord], list[Attempt]]:
    # Each run's state changes in the order they happened: a RUNNING state comes before
    # the PENDING states that counted it, and every state before the final one.
    by_run: dict[int, list[tuple[float, tuple[Any, ...]]]] = {}
    flat = recorder.starts
    starts = zip(flat[0::3], flat[1::3], flat[2::3], strict=True)
    for index, start in enumerate(starts):
        by_run.setdefault(start[0], []).append((index, start))
    for event in _completed_events(recorder) + recorder.ends:
        position = event[5] - 0.5 if len(event) == 6 else math.inf
        by_run.setdefault(event[0], []).append((position, event))
    runs: dict[int, RunRecord] = {}
    attempts: list[Attempt] = []
    for run_id in sorted(by_run):
        entries = [event for _, event in sorted(by_run[run_id], key=itemgetter(0))]
        record = _one_run(run_id, entries, flow_end)
        runs[run_id] = record
        attempts.extend(record.attempts)
    return runs, attempts


def _one_run(run_id: int, entries: list[tuple[Any, ...]], flow_end: float) -> RunRecord:
    made: list[Attempt] = []
    retry_messages: list[str] = []
    started: float | None = None
    where: str | None = None
    for event in entries:
        timestamp, worker = event[1], event[2]
        if len(event) == 3:  # RUNNING: an attempt starts (a repeated report changes nothing)
            if started is None:
                started, where = timestamp, worker
            continue
        name = event[3]
        if len(event) == 6:  # a PENDING state between attempts (Retrying)
            # An attempt whose start was not heard before its end (a runner that sends
            # starts in batches) is drawn as an instant at its end.
            begun = timestamp if started is None else min(started, timestamp)
            made.append(_attempt(run_id, len(made) + 1, begun, timestamp, where or worker, name))
            started = None
            retry_messages.append(event[4])
            continue
        if started is not None:
            begun = min(started, timestamp)
            made.append(_attempt(run_id, len(made) + 1, begun, timestamp, where or worker, name))
        elif _ran(event[4], name, worker, made):
            made.append(_attempt(run_id, len(made) + 1, timestamp, timestamp, worker, name))
        _, _, _, _, kind, run_name, task, retries, upstream_ids, parent_id, message, text = event
        return RunRecord(
            run_id,
            run_name,
            task,
            kind,
            name,
            message,
            upstream_ids,
            parent_id,
            retries,
            text,
            timestamp,
            made,
            retry_messages,
        )
    # No final state heard: the attempt under way lasted to the flow's end.
    if started is not None:
        made.append(_attempt(run_id, len(made) + 1, started, flow_end, where, "Running"))
    return RunRecord(
        run_id,
        f"run #{run_id}",
        "?",
        "UNKNOWN",
        "Unknown",
        None,
        (),
        None,
        0,
        None,
        flow_end,
        made,
        retry_messages,
    )


def _ran(kind: str, name: str, worker: str | None, made: list[Attempt]) -> bool:
    """Whether a run whose start was not heard ran all the same: it completed, or failed
    where its runner said it ran, or after attempts that were heard."""
    if name == "UpstreamFailed" or kind == "CANCELLED":
        return False
    return kind == "COMPLETED" or worker is not None or bool(made)


def _attempt(
    run_id: int, number: int, start: float, end: float, worker: str | None, outcome: str
) -> Attempt:
    return Attempt(run_id, number, start, max(start, end), worker or UNKNOWN_WORKER, outcome)


def _queue_on_workers(attempts: list[Attempt]) -> None:
    """On a runner that queues runs on its workers, an attempt starts when the one
    before it on the same worker ended (it was reported RUNNING as it was sent)."""
    by_worker: dict[str, list[Attempt]] = {}
    for attempt in attempts:
        by_worker.setdefault(attempt.worker, []).append(attempt)
    for queue in by_worker.values():
        queue.sort(key=lambda a: a.end)
        previous_end = float("-inf")
        for attempt in queue:
            if attempt.start < previous_end:
                attempt.start = min(previous_end, attempt.end)
            previous_end = attempt.end


def _assign_lanes(attempts: list[Attempt], runs: dict[int, RunRecord]) -> dict[str, int]:
    """Give each attempt a lane of its worker: attempts in one lane never overlap, except
    a nested run drawn inside its parent (the ``sync`` runner runs it there)."""
    open_by_worker: dict[str, list[list[Attempt]]] = {}
    for attempt in attempts:  # sorted by start, longest first
        lanes = open_by_worker.setdefault(attempt.worker, [])
        placed = False
        for number, stack in enumerate(lanes):
            while stack and stack[-1].end <= attempt.start:
                stack.pop()
            if not stack or (
                attempt.end <= stack[-1].end
                and runs.get(attempt.run_id) is not None
                and runs[attempt.run_id].parent_id == stack[-1].run_id
            ):
                stack.append(attempt)
                attempt.lane = number
                placed = True
                break
        if not placed:
            attempt.lane = len(lanes)
            lanes.append([attempt])
    return {worker: len(lanes) for worker, lanes in open_by_worker.items()}


def _options_of(runner: object) -> dict[str, str]:
    """The runner's public settings, as text."""
    options: dict[str, str] = {}
    for name, value in sorted(getattr(runner, "__dict__", {}).items()):
        if name.startswith("_"):
            continue
        options[name] = value if isinstance(value, str) else repr(value)
    return options
