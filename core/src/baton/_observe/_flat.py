"""The trace of a flow run whose runs all completed at the first attempt, with no
upstream or parent among them (a large `.map`, most often), written straight from
the recorder's lists: one attempt per run and no arrows, so no record of each run
and attempt is made. It is the same text `chrome_trace` writes from a `FlowRecord`
(a test holds them equal); any other flow run goes that way.
"""

from __future__ import annotations

import math
import time
from json.encoder import encode_basestring_ascii
from operator import itemgetter
from typing import TYPE_CHECKING, Any

from baton._observe._model import (
    _QUEUEING_RUNNERS,
    _SUFFIXES,
    UNKNOWN_WORKER,
    FlowRecord,
    _about,
    _options_of,
)
from baton._observe._trace import attempt_template, chrome_trace, pids_of
from baton._task import NAME_HASH

if TYPE_CHECKING:
    from baton._flow import FlowRun
    from baton._observe import Recorder
    from baton._states import State

__all__ = ["flat_trace"]

_COMPLETED_NAME = "Completed"


def flat_trace(flow_run: FlowRun, state: State, recorder: Recorder) -> str | None:
    """The trace file's text, or None when the flow run is not of that kind."""
    runner = flow_run.task_runner
    if (
        recorder.retried
        or recorder.ends
        or recorder.links
        or recorder.completed_names
        or runner.name in _QUEUEING_RUNNERS
    ):
        return None
    flat = recorder.starts
    # Read from the last to the first: the first RUNNING of a run wins.
    times_and_workers = zip(reversed(flat[1::3]), reversed(flat[2::3]), strict=True)
    started: dict[int, tuple[float, str | None]] = dict(
        zip(reversed(flat[0::3]), times_and_workers, strict=True)
    )
    done = recorder.completed
    ids = done[0::4]
    known = set(ids)
    if len(known) != len(ids) or not started.keys() <= known:
        return None  # a run with two final states, or one that never ended: the general path
    ends = done[1::4]
    tasks = done[3::4]
    # One row per attempt: start, end, worker, run id, task.
    rows: list[tuple[float, float, str, int, Any]] | None = None
    if len(started) == len(ids):  # every run was heard RUNNING: made without a loop
        begun = list(map(started.__getitem__, ids))
        where = list(map(itemgetter(1), begun))
        if None not in where:
            starts = map(min, map(itemgetter(0), begun), ends)
            rows = list(zip(starts, ends, where, ids, tasks, strict=True))
    if rows is None:
        rows = _rows(started, ids, ends, done[2::4], tasks)
    # As `FlowRecord.build` orders attempts: by start, the longest first among those
    # starting together, then by run id (the order completions came in, almost).
    rows.sort(key=itemgetter(3))
    rows.sort(key=itemgetter(1), reverse=True)
    rows.sort(key=itemgetter(0))
    workers = list(dict.fromkeys(map(itemgetter(2), rows)))
    record = FlowRecord(
        flow=flow_run.flow.name,
        flow_run=flow_run.name,
        state=state.name,
        message=state.message,
        start=flow_run.start_time,
        end=flow_run.end_time or time.time(),
        runner=runner.name,
        runner_options=_options_of(runner),
        runs={},
        attempts=[],
        workers=workers,
        lanes={},
    )
    lines = _lines(record, rows, recorder.names)
    return chrome_trace(record, lines, len(rows))


def _rows(
    started: dict[int, tuple[float, str | None]],
    ids: list[int],
    ends: list[float],
    workers: list[str | None],
    tasks: list[Any],
) -> list[tuple[float, float, str, int, Any]]:
    """The rows of runs some of which were not heard RUNNING, or not where."""
    get_start = started.get
    rows: list[tuple[float, float, str, int, Any]] = []
    add = rows.append
    for run_id, ended, worker, task in zip(ids, ends, workers, tasks, strict=True):
        start = get_start(run_id)
        if start is None:
            add((ended, ended, worker or UNKNOWN_WORKER, run_id, task))
        else:
            begun, where = start
            add((min(begun, ended), ended, where or worker or UNKNOWN_WORKER, run_id, task))
    return rows


def _lines(
    record: FlowRecord,
    rows: list[tuple[float, float, str, int, Any]],
    names: dict[int, str],
) -> list[str]:
    """The attempts' events; fills in `record.lanes` (as `_assign_lanes` would: with no
    nested run, an attempt takes the first lane of its worker that is free by then)."""
    encode = encode_basestring_ascii
    pids = pids_of(record)
    origin = record.start
    suffixes = _SUFFIXES
    # The end of the last attempt in each lane of each worker (every worker has one).
    lane_ends: dict[str, list[float]] = {worker: [-math.inf] for worker in record.workers}
    # Per worker, the events' templates by task (lane 1) or (task, lane), in two kinds:
    # for a run with its default name, which only its last three characters tell apart
    # from its task's other runs, and for a run named otherwise.
    templates: dict[str, dict[Any, tuple[str, str]]] = {w: {} for w in record.workers}
    lines: list[str] = []
    add = lines.append
    for start, end, worker, run_id, task in rows:
        ends = lane_ends[worker]
        if ends[0] <= start:  # most often: one lane per worker
            lane = 0
            ends[0] = end
            key: Any = task
        else:
            for lane, free_at in enumerate(ends):
                if free_at <= start:
                    ends[lane] = end
                    break
            else:
                lane = len(ends)
                ends.append(end)
            key = (task, lane)
        of_worker = templates[worker]
        pair = of_worker.get(key)
        if pair is None:
            pair = of_worker[key] = _templates(pids, worker, lane, task)
        name = names.get(run_id) if names else None
        if name is None:
            suffix = suffixes[(run_id * NAME_HASH) & 0xFFF]
            add(pair[0] % (run_id, suffix, suffix, (start - origin) * 1e6, (end - start) * 1e6))
        else:
            text = encode(name)
            add(pair[1] % (run_id, text, text, (start - origin) * 1e6, (end - start) * 1e6))
    record.lanes = {worker: len(ends) for worker, ends in lane_ends.items()}
    return lines


def _templates(pids: dict[str, int], worker: str, lane: int, task: Any) -> tuple[str, str]:
    """The templates of the events of `task`'s runs on `lane` of `worker`: for a run with
    its default name (the last three characters of the name left to fill in), and for
    any other name (see `attempt_template`)."""
    prefix, task_name, retries = _about(task)
    named = attempt_template(
        pids, worker, lane, task_name, _COMPLETED_NAME, _COMPLETED_NAME, 1, retries
    )
    # The prefix as JSON without its closing quote: the hex digits need no escaping.
    text = encode_basestring_ascii(prefix)[:-1].replace("%", "%%")
    default = named.replace('"run":%s},"name":%s', f'"run":{text}%s"}},"name":{text}%s"')
    return default, named
