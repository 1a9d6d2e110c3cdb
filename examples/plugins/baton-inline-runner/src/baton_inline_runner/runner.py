"""The `inline` runner: each task run runs to its end inside `submit`."""

from __future__ import annotations

import sys
import threading
from typing import TYPE_CHECKING, TextIO, final
from urllib.parse import parse_qs, urlsplit

from baton import Capability, InvalidOptionsError, TaskRunner

if TYPE_CHECKING:
    from baton import TaskRun
    from typing_extensions import Self

__all__ = ["InlineRunner"]

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@final
class InlineRunner(TaskRunner):
    """Runs every task run in the thread that submits it, in submission order.

    With ``trace=True`` it writes one line per run it executes to `stream`
    (stderr by default), which shows the order in which a flow's runs execute.

    >>> from baton import flow, task
    >>> @task
    ... def inc(x):
    ...     return x + 1
    >>> @flow(task_runner=InlineRunner())
    ... def plus_one(xs):
    ...     return inc.map(xs).result()
    >>> plus_one([1, 2])
    [2, 3]
    """

    name = "inline"
    capabilities = frozenset({Capability.ASYNC, Capability.NESTED})
    url_schemes = ("inline",)

    def __init__(self, trace: bool = False, stream: TextIO | None = None) -> None:
        if not isinstance(trace, bool):
            raise InvalidOptionsError(
                f"Invalid options for task runner 'inline':\n  trace: must be True or False "
                f"(got {trace!r})"
            )
        self.trace = trace
        self.stream = stream
        self._lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str) -> Self:
        """``inline://`` or ``inline://?trace=1``."""
        parts = urlsplit(url)
        query = parse_qs(parts.query, keep_blank_values=True)
        unknown = sorted(set(query) - {"trace"})
        if parts.scheme != "inline" or parts.netloc or parts.path not in ("", "/") or unknown:
            raise InvalidOptionsError(
                f"Invalid URL for task runner 'inline': {url!r}. It takes the form "
                "inline:// or inline://?trace=1."
            )
        value = query.get("trace", ["0"])[-1].lower()
        if value not in _TRUE | _FALSE:
            raise InvalidOptionsError(
                f"Invalid URL for task runner 'inline': trace={value!r} in {url!r}; use 1 or 0."
            )
        return cls(trace=value in _TRUE)

    def submit(self, run: TaskRun) -> None:
        if self.trace:
            with self._lock:
                print(f"inline: running {run.name!r}", file=self.stream or sys.stderr, flush=True)
        run.execute()

    def __repr__(self) -> str:
        return f"<InlineRunner trace={self.trace} {'started' if self.started else 'new'}>"
