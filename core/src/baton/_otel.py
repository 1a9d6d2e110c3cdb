"""OpenTelemetry spans: a flow run is a span, each attempt of a task run a child span.

Turned on by ``BATON_OPENTELEMETRY=true`` (read as a flow run starts) with
``pip install "baton-core[otel]"``; the tracer provider, its processors and
exporters are the user's, configured as for any OpenTelemetry instrumentation. This
module is the only place that knows about OpenTelemetry, and it is imported only
when tracing is on: with the setting off, a flow run, a task run and an attempt
each cost one ``is None`` check.

How the trace context travels with a run:

- As a flow run starts, its span becomes the current context of the flow's code, and
  the flow's scope holds a `Trace`.
- A task run created under a traced scope keeps the context current at that moment
  (`Trace.child`): the flow's span, or the span of the attempt whose task submitted it.
- In this process (``thread``, ``sync``, direct calls) the engine opens each attempt's
  span in that context and runs the task's function inside it
  (`attempt_span`), so the spans a task makes nest under its attempt.
- A run sent to another process or machine carries the context as a W3C
  ``traceparent`` in `RunCall.trace_context` (`carrier`, filled in the driver);
  ``run_call`` on the worker rebuilds it (`from_carrier`) and the attempt spans made
  there join the same trace. They are exported by the worker's own tracer provider:
  one must be configured there for them to be recorded.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, final

from baton._states import State, StateType

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Span, Tracer

__all__ = [
    "INSTALL_HINT",
    "FlowTrace",
    "Trace",
    "attempt_span",
    "end_flow",
    "from_carrier",
    "require",
    "start_flow",
]

INSTALL_HINT = 'pip install "baton-core[otel]"'
TRACER_NAME = "baton"
RUNNER_KEY = "baton-runner"
"""The carrier key that names the runner, next to ``traceparent`` and ``tracestate``."""

_ERROR_TYPES = frozenset({StateType.FAILED, StateType.CRASHED})


def require() -> None:
    """Raise an `ImportError` that says what to install, when OpenTelemetry is missing."""
    try:
        from opentelemetry import propagate, trace

        del propagate, trace
    except ImportError as exc:
        raise ImportError(
            "BATON_OPENTELEMETRY is on but the OpenTelemetry API is not installed "
            f"({exc}). Install it with `{INSTALL_HINT}` (and configure a tracer provider "
            "from opentelemetry-sdk), or unset BATON_OPENTELEMETRY."
        ) from exc


def _tracer() -> Tracer:
    from opentelemetry import trace

    return trace.get_tracer(TRACER_NAME, _version())


@functools.cache
def _version() -> str | None:
    from importlib import metadata

    try:
        return metadata.version("baton-core")
    except metadata.PackageNotFoundError:
        return None


class Trace:
    """The trace context a task run starts in, and the runner it runs on."""

    __slots__ = ("context", "runner", "tracer")

    def __init__(self, context: Context, runner: str, tracer: Tracer) -> None:
        self.context = context
        self.runner = runner
        self.tracer = tracer

    def child(self, runner: str) -> Trace:
        """The trace of a task run created now: the current context (the flow's span, or
        the span of the attempt that submits it); this one's for a thread that carries
        no span (one the user started)."""
        from opentelemetry import context, trace

        current = context.get_current()
        if not trace.get_current_span(current).get_span_context().is_valid:
            current = self.context
        return Trace(current, runner, self.tracer)

    def carrier(self) -> dict[str, str]:
        """This context as text, to travel with a run (``traceparent``, ``tracestate``)."""
        from opentelemetry import propagate

        carrier: dict[str, str] = {RUNNER_KEY: self.runner}
        propagate.inject(carrier, self.context)
        return carrier


@final
class FlowTrace(Trace):
    """The trace of a flow run: its span, current in the flow's code until it ends."""

    __slots__ = ("span", "token")

    def __init__(self, span: Span, context: Context, runner: str, tracer: Tracer) -> None:
        from opentelemetry import context as otel_context

        super().__init__(context, runner, tracer)
        self.span = span
        self.token = otel_context.attach(context)

    def end(self, state: State) -> None:
        """End the flow run's span with its final `state`, and leave its context."""
        from opentelemetry import context as otel_context

        try:
            _record(self.span, state)
            self.span.end()
        finally:
            otel_context.detach(self.token)


def start_flow(flow_name: str, run_name: str, runner: str) -> FlowTrace:
    """Start a flow run's span, current from now on in the calling context (the flow's).

    The caller ends it with `FlowTrace.end` in that same context."""
    require()
    from opentelemetry import trace

    tracer = _tracer()
    span = tracer.start_span(
        f"flow {flow_name}",
        attributes={"baton.flow": flow_name, "baton.flow_run": run_name, "baton.runner": runner},
    )
    return FlowTrace(span, trace.set_span_in_context(span), runner, tracer)


def end_flow(trace: Trace, state: State) -> None:
    """End the span of a flow run (its scope's `trace`) with its final `state`."""
    if isinstance(trace, FlowTrace):
        trace.end(state)


_warned = False


def from_carrier(carrier: Mapping[str, str]) -> Trace | None:
    """The trace a run sent here carries (see `Trace.carrier`); None, with a warning once,
    where OpenTelemetry is not installed (the run goes on untraced)."""
    try:
        from opentelemetry import propagate
    except ImportError:
        global _warned
        if not _warned:
            _warned = True
            import logging

            logging.getLogger("baton").warning(
                "A task run arrived with an OpenTelemetry trace context but OpenTelemetry "
                "is not installed here (pid %d): its spans are not recorded. Install it "
                "where the runs execute with `%s`.",
                os.getpid(),
                INSTALL_HINT,
            )
        return None
    return Trace(propagate.extract(carrier), carrier.get(RUNNER_KEY, "?"), _tracer())


# -- attempts ---------------------------------------------------------------------------

_host: tuple[int, str] | None = None


def worker_identity() -> str:
    """Where this code runs, as ``host:pid:thread``."""
    global _host
    pid = os.getpid()
    if _host is None or _host[0] != pid:
        import socket

        _host = (pid, socket.gethostname())
    return f"{_host[1]}:{pid}:{threading.current_thread().name}"


class _Ended:
    """Receives the state an attempt ended in, to put on its span."""

    __slots__ = ("state",)

    def __init__(self) -> None:
        self.state: State | None = None

    def __call__(self, state: State) -> State:
        self.state = state
        return state


@contextmanager
def attempt_span(trace: Trace, task: str, run_name: str, attempt: int) -> Iterator[_Ended]:
    """The span of one attempt of a task run, current inside the block (the task's
    function runs there). Pass the attempt's final state to what it yields."""
    attributes: dict[str, Any] = {
        "baton.task": task,
        "baton.task_run": run_name,
        "baton.attempt": attempt,
        "baton.runner": trace.runner,
        "baton.worker": worker_identity(),
    }
    ended = _Ended()
    with trace.tracer.start_as_current_span(
        f"task {task}",
        context=trace.context,
        attributes=attributes,
        record_exception=True,
        set_status_on_exception=True,
    ) as span:
        yield ended
        if ended.state is not None:
            _record(span, ended.state)


def _record(span: Span, state: State) -> None:
    """Put a final `state` on `span`: its name, and an ERROR status with the exception
    for a failure or a crash."""
    span.set_attribute("baton.state", state.name)
    if state.type in _ERROR_TYPES:
        from opentelemetry.trace import Status, StatusCode

        error = state.error
        if error is not None:
            span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, state.message or state.name))
