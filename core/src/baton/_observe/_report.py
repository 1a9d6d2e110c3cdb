"""A flow run as one self-contained HTML page: its data inline as JSON, drawn by the
page's own script (a canvas timeline per worker, counts, the slowest runs, every
failure with its traceback, retries). Nothing is fetched: it opens from disk.
"""

from __future__ import annotations

import html
import json
from importlib import resources
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from baton._observe._model import FlowRecord

__all__ = ["html_report", "report_data"]

_TEMPLATE = "_report_template.html"
_DATA_MARK = "/*BATON_REPORT_DATA*/null"
_TITLE_MARK = "BATON_REPORT_TITLE"


def report_data(record: FlowRecord) -> dict[str, Any]:
    """What the page's script draws, in compact rows (a page for 10,000 runs stays small).

    ``runs`` rows: id, name, task, state type, state name, message, retries allowed,
    traceback, attempts, microseconds from its first start to its end, end
    (microseconds after the flow started). ``attempts`` rows: index in ``runs``,
    number, start, end (microseconds after the flow started), index in ``workers``,
    lane, outcome. Times are whole microseconds: integers are written (and read) much
    faster than fractions, and the page turns them back into seconds.
    """
    origin = record.start
    index = {run_id: position for position, run_id in enumerate(record.runs)}
    worker_index = {worker: position for position, worker in enumerate(record.workers)}
    runs = [
        [
            run.id,
            run.name,
            run.task,
            run.state,
            run.state_name,
            None if run.state == "COMPLETED" else run.message,
            run.retries,
            run.traceback,
            len(run.attempts),
            round(run.duration * 1e6),
            round((run.end - origin) * 1e6),
            run.retry_messages,
        ]
        for run in record.runs.values()
    ]
    attempts = [
        [
            index[attempt.run_id],
            attempt.number,
            round((attempt.start - origin) * 1e6),
            round((attempt.end - origin) * 1e6),
            worker_index[attempt.worker],
            attempt.lane,
            attempt.outcome,
        ]
        for attempt in record.attempts
    ]
    return {
        "flow": record.flow,
        "flow_run": record.flow_run,
        "state": record.state,
        "message": record.message,
        "start": origin,
        "duration": round(record.end - origin, 6),
        "runner": record.runner,
        "options": record.runner_options,
        "workers": [[worker, record.lanes[worker]] for worker in record.workers],
        "runs": runs,
        "attempts": attempts,
    }


def html_report(record: FlowRecord) -> str:
    """The page's text."""
    template = resources.files("baton._observe").joinpath(_TEMPLATE).read_text("utf-8")
    data = json.dumps(report_data(record), separators=(",", ":"), default=str)
    # Inside a <script> element nothing may close it: "<" is written as its escape.
    data = data.replace("<", "\\u003c").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    title = html.escape(f"{record.flow_run} ({record.flow}) - Baton")
    return template.replace(_TITLE_MARK, title, 1).replace(_DATA_MARK, data, 1)
