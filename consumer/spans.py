"""The OpenTelemetry spans of one request inside a worker.

A request's span continues the trace its record carries (`traceparent`) or,
in the embedded bridge, the HTTP request's; without either it starts one. The
transport that submits the request owns that span and ends it once the answer
is delivered. Its children are written after the fact, with the times the
pipeline measured anyway: `queue` (arrival to its batch's start), `decode`
(in a decode thread), `inference` (the whole engine call of its batch, shared
by every request in it) and `reply` (sending the answer until the broker
acknowledged it; the answer's `traceparent` names this span).

Without a tracer provider every span here is non-recording: the children are
skipped, and the answer carries the record's own trace context on.
"""

from __future__ import annotations

import time

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.util.types import Attributes

from consumer.protocol import Headers, with_trace
from engines.errors import TfstreamError
from engines.tracing import tracer

_PERF_TO_WALL_NS = time.time_ns() - time.perf_counter_ns()


def wall_ns(perf_counter_s: float) -> int:
    """A `time.perf_counter()` reading as epoch nanoseconds, the unit of span times."""
    return int(perf_counter_s * 1e9) + _PERF_TO_WALL_NS


class RequestSpans:
    def __init__(
        self,
        name: str,
        parent: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Attributes = None,
    ) -> None:
        """`parent` None: the current context."""
        self.span = tracer().start_span(name, context=parent, kind=kind, attributes=attributes)
        self.context = trace.set_span_in_context(self.span)

    def child(self, name: str, start_s: float, end_s: float, **attributes: str | int) -> None:
        """A finished step, from two `perf_counter` readings."""
        if not self.span.is_recording():
            return
        span = tracer().start_span(
            name, context=self.context, start_time=wall_ns(start_s), attributes=attributes
        )
        span.end(end_time=wall_ns(end_s))

    def reply(self, topic: str, headers: Headers) -> tuple[trace.Span, list[tuple[str, bytes]]]:
        """The reply span, started now, and the answer's headers that name it."""
        span = tracer().start_span(
            f"{topic} publish",
            context=self.context,
            kind=SpanKind.PRODUCER,
            attributes={"messaging.system": "kafka", "messaging.destination.name": topic},
        )
        return span, with_trace(headers, trace.set_span_in_context(span))

    def end(self, error: TfstreamError | None = None) -> None:
        if error is not None and self.span.is_recording():
            self.span.set_attribute("tfstream.error_code", error.code)
            self.span.set_status(Status(StatusCode.ERROR, error.message))
        self.span.end()
