"""OpenTelemetry for the tests: a tracer provider that keeps finished spans in memory,
installed for one test and taken away after it, with ``BATON_OPENTELEMETRY=true``.

OpenTelemetry lets a process set its global tracer provider once; the tests (and
the documentation's examples, run in the same session) each need their own, so the
fixture resets that global as OpenTelemetry's own test utilities do, and puts back
what was there after.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.util._once import Once


@contextmanager
def recorded_spans(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    """Spans recorded by a fresh global tracer provider, with Baton's tracing on."""
    monkeypatch.setenv("BATON_OPENTELEMETRY", "true")
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(trace, "_TRACER_PROVIDER_SET_ONCE", Once())
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", None)
    trace.set_tracer_provider(provider)
    try:
        yield exporter
    finally:
        provider.shutdown()


def hex_id(number: int, digits: int = 32) -> str:
    return format(number, f"0{digits}x")


def current_trace_id() -> str:
    """The trace id of the span current where this runs (in a task, say), in hex."""
    return hex_id(trace.get_current_span().get_span_context().trace_id)


def one(spans: Sequence[ReadableSpan], name: str) -> ReadableSpan:
    found = [span for span in spans if span.name == name]
    assert len(found) == 1, f"{len(found)} spans named {name!r} in {[s.name for s in spans]}"
    return found[0]
