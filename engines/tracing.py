"""OpenTelemetry for tfstream processes: set up once at the entry point, or not at all.

Code everywhere asks `tracer()` for spans through the OpenTelemetry API only.
Until a process calls `configure_tracing` with an exporter (or something else
installs a tracer provider, as a test does with the SDK's in-memory
exporter), the API hands out non-recording spans: starting one costs well
under a microsecond and nothing is exported, while trace context received in
headers is still passed on unchanged, so a traced client keeps its trace
through an untraced server.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import IO, ClassVar, Literal

from opentelemetry import trace

from engines.settings import SettingsPart

#: The instrumentation scope of every tfstream span.
SCOPE = "tfstream"

Exporter = Literal["none", "otlp", "console", "jsonl"]


class TracingSettings(SettingsPart):
    """The tracing options of a process (mixed into its one settings object)."""

    group_title: ClassVar[str] = "Tracing"

    trace_exporter: Exporter = "none"
    """Where spans go: none (no spans recorded; trace headers are still passed on),
    otlp (OTLP over HTTP to --otlp-endpoint), console (stdout), or jsonl (one JSON
    object per span appended to --trace-file)."""
    otlp_endpoint: str = ""
    """OTLP/HTTP traces endpoint, e.g. http://collector:4318/v1/traces (default: the
    OTEL_EXPORTER_OTLP_* environment variables, else localhost:4318)."""
    trace_file: Path | None = None
    """File that --trace-exporter jsonl appends to."""


_lock = threading.Lock()
_configured = False


def tracer() -> trace.Tracer:
    return trace.get_tracer(SCOPE)


def tracing_active() -> bool:
    """Whether spans are recorded: a tracer provider is installed (by
    `configure_tracing`, or by a test). Without one, code with no trace context
    to pass on can skip its span bookkeeping altogether."""
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


def configure_tracing(settings: TracingSettings, service: str) -> bool:
    """Install the SDK with the chosen exporter as the global tracer provider.

    Returns False (and installs nothing) for `none`. Called once per process,
    at its entry point; a second call is ignored, like OpenTelemetry's own
    global provider.
    """
    global _configured
    if settings.trace_exporter == "none":
        return False
    with _lock:
        if _configured:
            return True
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            ConsoleSpanExporter,
            SimpleSpanProcessor,
            SpanExporter,
        )

        provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service}))
        exporter: SpanExporter
        if settings.trace_exporter == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter(endpoint=settings.otlp_endpoint or None)
            provider.add_span_processor(BatchSpanProcessor(exporter))
        else:
            out: IO[str] = sys.stdout
            if settings.trace_exporter == "jsonl":
                if settings.trace_file is None:
                    raise SystemExit("--trace-exporter jsonl needs --trace-file")
                out = settings.trace_file.open("a", buffering=1)  # open for the life of the process
            indent = None if settings.trace_exporter == "jsonl" else 4
            exporter = ConsoleSpanExporter(
                out=out, formatter=lambda span: span.to_json(indent=indent) + "\n"
            )
            # Synchronous: a span is on disk (or stdout) when it ends, even if the
            # process is killed right after, which is what a debugging sink is for.
            provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        _configured = True
        return True
