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
    if len(set(ids)) != len(ids):  # a run with two final states: the general path
        return None
    completed = sorted(zip(ids, done[1::4], done[2::4], done[3::4], strict=True), key=itemgetter(0))
    names = recorder.names
    tasks: dict[Any, tuple[str, str, int]] = {}
    get_start = started.get
    # One row per attempt: start, end, worker, run id, run name, task name, retries.
    rows: list[tuple[float, float, str, int, str, str, int]] = []
    add = rows.append
    for run_id, ended, worker, task in completed:
        about = tasks.get(task)
        if about is None:
            about = tasks[task] = _about(task)
        name = names.get(run_id) if names else None
        if name is None:
            name = about[0] + _SUFFIXES[(run_id * NAME_HASH) & 0xFFF]
        start = get_start(run_id)
        if start is None:
            add((ended, ended, worker or UNKNOWN_WORKER, run_id, name, about[1], about[2]))
        else:
            begun = start[0]
            add(
                (
                    begun if begun <= ended else ended,
                    ended,
                    start[1] or worker or UNKNOWN_WORKER,
                    run_id,
                    name,
                    about[1],
                    about[2],
                )
            )
    if not started.keys() <= set(ids):
        return None
    # As `FlowRecord.build` orders attempts: by start, the longest first among those
    # starting together.
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
    lines = _lines(record, rows)
    return chrome_trace(record, lines, len(rows))


def _lines(
    record: FlowRecord, rows: list[tuple[float, float, str, int, str, str, int]]
) -> list[str]:
    """The attempts' events; fills in `record.lanes` (as `_assign_lanes` would: with no
    nested run, an attempt takes the first lane of its worker that is free by then)."""
    encode = encode_basestring_ascii
    pids = pids_of(record)
    origin = record.start
    # The end of the last attempt in each lane of each worker (every worker has one).
    lane_ends: dict[str, list[float]] = {worker: [-math.inf] for worker in record.workers}
    templates: dict[tuple[str, int, str, int], str] = {}
    lines: list[str] = []
    add = lines.append
    for start, end, worker, run_id, name, task, retries in rows:
        ends = lane_ends[worker]
        if ends[0] <= start:  # most often: one lane per worker
            lane = 0
            ends[0] = end
        else:
            for lane, free_at in enumerate(ends):
                if free_at <= start:
                    ends[lane] = end
                    break
            else:
                lane = len(ends)
                ends.append(end)
        key = (worker, lane, task, retries)
        template = templates.get(key)
        if template is None:
            template = templates[key] = attempt_template(
                pids, worker, lane, task, _COMPLETED_NAME, _COMPLETED_NAME, 1, retries
            )
        text = encode(name)
        add(template % (run_id, text, text, (start - origin) * 1e6, (end - start) * 1e6))
    record.lanes = {worker: len(ends) for worker, ends in lane_ends.items()}
    return lines
