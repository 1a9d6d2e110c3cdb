"""A flow run as a Chrome trace (the Trace Event Format's JSON object form), which
Perfetto (ui.perfetto.dev) and ``chrome://tracing`` open.

- The flow run is process 1: one slice from its start to its end, and an instant
  event for each task run that never ran (``UpstreamFailed``, cancelled).
- Each worker is a process of its own (named after it: a thread's name, ``pid N``, a
  Dask worker's address, a Ray node and pid), with one thread per lane: attempts in
  one lane never overlap, except a nested run drawn inside its parent.
- Each attempt of a task run is one complete event (``"ph": "X"``), named after the
  run, in the category of its task, with the run's name, task, state, attempt number
  and retries in its ``args``.
- Flow events (``"ph": "s"``/``"f"``) draw arrows from each upstream run to the runs
  that waited for it (category ``upstream``), from a parent run to the runs its
  task submitted (``nested``), and from one attempt of a run to the next
  (``retry``).
"""

from __future__ import annotations

import json
from json.encoder import encode_basestring_ascii
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from baton._observe._model import Attempt, FlowRecord

__all__ = ["FLOW_PID", "attempt_template", "chrome_trace", "pids_of", "trace_events"]

FLOW_PID = 1
"""The process of the trace that holds the flow run itself."""


def chrome_trace(
    record: FlowRecord, attempt_lines: list[str] | None = None, task_runs: int | None = None
) -> str:
    """The trace file's text: the same events as `trace_events`, the attempts written
    from a template (a flow run of 10,000 runs is written in milliseconds).

    `attempt_lines` and `task_runs`, when given, stand for the attempts' events and
    the number of runs (a record made for its metadata only: see `_flat`)."""
    other = {
        "flow": record.flow,
        "flow_run": record.flow_run,
        "state": record.state,
        "task_runner": record.runner,
        "task_runs": len(record.runs) if task_runs is None else task_runs,
    }
    events = trace_events(record, attempts=False)
    parts = [json.dumps(e, separators=(",", ":"), default=str) for e in events]
    parts.extend(_attempt_lines(record) if attempt_lines is None else attempt_lines)
    # One join: the text of a large flow run is copied once.
    parts[0] = '{"traceEvents":[\n' + parts[0]
    parts[-1] += (
        '\n],"displayTimeUnit":"ms","otherData":' + json.dumps(other, separators=(",", ":")) + "}\n"
    )
    return ",\n".join(parts)


# An attempt's event in two parts: what attempts on one lane of one worker, of one
# task, ending alike share (written once per such group), then the rest of it.
_ATTEMPT_GROUP = (
    '{"ph":"X","pid":%d,"tid":%d,"cat":%s,"args":{"task":%s,"worker":%s,"state":%s,'
    '"final_state":%s,"attempt":%d,"retries":%d,'
)
_ATTEMPT_REST = '"run_id":%d,"run":%s},"name":%s,"ts":%.3f,"dur":%.3f}'


def _attempt_lines(record: FlowRecord) -> list[str]:
    """One complete event per attempt, as `trace_events` makes them."""
    encode = encode_basestring_ascii  # json's own string encoder (C), without dumps' setup
    pids = pids_of(record)
    origin = record.start
    runs = record.runs
    templates: dict[tuple[Any, ...], str] = {}
    lines: list[str] = []
    add = lines.append
    for attempt in record.attempts:
        run = runs[attempt.run_id]
        key = (
            attempt.worker,
            attempt.lane,
            run.task,
            attempt.outcome,
            run.state_name,
            attempt.number,
            run.retries,
        )
        template = templates.get(key)
        if template is None:
            template = templates[key] = attempt_template(pids, *key)
        name = encode(run.name)
        start = attempt.start
        add(template % (run.id, name, name, (start - origin) * 1e6, (attempt.end - start) * 1e6))
    return lines


def attempt_template(
    pids: dict[str, int],
    worker: str,
    lane: int,
    task: str,
    outcome: str,
    final: str,
    number: int,
    retries: int,
) -> str:
    """The template of the events of attempts alike: run id, run name (twice), start
    and duration (in µs) are left to fill in."""
    encode = encode_basestring_ascii
    task_text = encode(task)
    group = _ATTEMPT_GROUP % (
        pids[worker],
        lane + 1,
        task_text,
        task_text,
        encode(worker),
        encode(outcome),
        encode(final),
        number,
        retries,
    )
    return group.replace("%", "%%") + _ATTEMPT_REST


def pids_of(record: FlowRecord) -> dict[str, int]:
    """The trace's process of each worker."""
    return {worker: FLOW_PID + 1 + index for index, worker in enumerate(record.workers)}


def trace_events(record: FlowRecord, attempts: bool = True) -> list[dict[str, Any]]:
    """Every event of the trace, metadata first (without the attempts' complete events
    when `attempts` is False)."""
    origin = record.start

    def micros(timestamp: float) -> float:
        return round((timestamp - origin) * 1e6, 3)

    pids = pids_of(record)
    events: list[dict[str, Any]] = [
        _meta("process_name", FLOW_PID, 0, f"flow run {record.flow_run} ({record.flow})"),
        _meta("process_sort_index", FLOW_PID, 0, 0, key="sort_index"),
        _meta("thread_name", FLOW_PID, 1, "flow run"),
    ]
    for index, worker in enumerate(record.workers):
        pid = pids[worker]
        events.append(_meta("process_name", pid, 0, worker))
        events.append(_meta("process_sort_index", pid, 0, index + 1, key="sort_index"))
        lanes = record.lanes[worker]
        for lane in range(lanes):
            name = worker if lanes == 1 else f"{worker} ({lane + 1})"
            events.append(_meta("thread_name", pid, lane + 1, name))
    events.append(
        {
            "ph": "X",
            "name": f"flow run {record.flow_run}",
            "cat": "flow",
            "pid": FLOW_PID,
            "tid": 1,
            "ts": 0.0,
            "dur": micros(record.end),
            "args": {
                "flow": record.flow,
                "state": record.state,
                "message": record.message,
                "task_runner": record.runner,
                **{f"option {k}": v for k, v in record.runner_options.items()},
            },
        }
    )
    runs = record.runs
    for attempt in record.attempts if attempts else ():
        run = runs[attempt.run_id]
        events.append(
            {
                "ph": "X",
                "name": run.name,
                "cat": run.task,
                "pid": pids[attempt.worker],
                "tid": attempt.lane + 1,
                "ts": micros(attempt.start),
                "dur": round((attempt.end - attempt.start) * 1e6, 3),
                "args": {
                    "run": run.name,
                    "task": run.task,
                    "state": attempt.outcome,
                    "final_state": run.state_name,
                    "attempt": attempt.number,
                    "retries": run.retries,
                    "worker": attempt.worker,
                    "run_id": run.id,
                },
            }
        )
    for run in runs.values():
        if not run.attempts:
            events.append(
                {
                    "ph": "i",
                    "s": "t",
                    "name": run.name,
                    "cat": run.task,
                    "pid": FLOW_PID,
                    "tid": 1,
                    "ts": micros(run.end),
                    "args": {
                        "run": run.name,
                        "task": run.task,
                        "state": run.state_name,
                        "message": run.message,
                        "run_id": run.id,
                    },
                }
            )
    events.extend(_arrows(record, pids, micros))
    return events


def _meta(name: str, pid: int, tid: int, value: object, key: str = "name") -> dict[str, Any]:
    return {"ph": "M", "name": name, "pid": pid, "tid": tid, "args": {key: value}}


def _arrows(record: FlowRecord, pids: dict[str, int], micros: Any) -> list[dict[str, Any]]:
    arrows: list[dict[str, Any]] = []
    runs = record.runs
    number = 0

    def arrow(category: str, source: Attempt, target: Attempt) -> None:
        nonlocal number
        number += 1
        arrows.append(
            {
                "ph": "s",
                "id": number,
                "name": category,
                "cat": category,
                "pid": pids[source.worker],
                "tid": source.lane + 1,
                "ts": micros(source.start),
            }
        )
        arrows.append(
            {
                "ph": "f",
                "bp": "e",
                "id": number,
                "name": category,
                "cat": category,
                "pid": pids[target.worker],
                "tid": target.lane + 1,
                "ts": micros(target.start),
            }
        )

    for run in runs.values():
        if not run.attempts or not (
            run.upstream_ids or run.parent_id is not None or len(run.attempts) > 1
        ):
            continue
        first = run.attempts[0]
        for upstream_id in run.upstream_ids:
            upstream = runs.get(upstream_id)
            if upstream is not None and upstream.attempts:
                arrow("upstream", upstream.attempts[-1], first)
        parent = runs.get(run.parent_id) if run.parent_id is not None else None
        if parent is not None and parent.attempts:
            holding = [a for a in parent.attempts if a.start <= first.start] or parent.attempts
            arrow("nested", holding[-1], first)
        for before, after in zip(run.attempts, run.attempts[1:], strict=False):
            arrow("retry", before, after)
    return arrows
