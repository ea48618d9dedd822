"""One trace from the HTTP call to the worker's spans and the answer on Kafka.

Bridge and worker run in this process, over a real broker, so the SDK's
in-memory exporter sees every span of both. The provider is installed once
for this module and its exporter shut down afterwards (it then keeps nothing),
so the rest of the suite runs as untraced as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from consumer.settings import ConsumerSettings
from consumer.worker import Worker
from http_bridge.app import create_app
from http_bridge.settings import BridgeSettings
from tests.support.workers import (
    create_topic,
    header_dict,
    headers,
    raw_producer,
    read_topic,
    unique_prefix,
    wait_for,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

MODEL = "shapes_tf2"
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


@pytest.fixture(scope="module")
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    yield exporter
    exporter.shutdown()


@contextlib.asynccontextmanager
async def in_process_worker(bootstrap: str, repository: Path, prefix: str) -> AsyncIterator[Worker]:
    worker = Worker(
        ConsumerSettings(
            bootstrap=bootstrap,
            repository=repository,
            topic_prefix=prefix,
            models=MODEL,
            group=f"g-{uuid.uuid4().hex[:6]}",
            metrics_port=0,
            partitions=1,
            session_timeout_ms=6000,
            heartbeat_interval_ms=1000,
            metadata_max_age_ms=2000,
        )
    )
    task = asyncio.create_task(worker.run())
    try:
        await wait_for(lambda: task.done() or worker.joined, timeout_s=120)
        await wait_for(lambda: task.done() or bool(worker.consumer.assignment()), timeout_s=60)
        if task.done():
            task.result()
        yield worker
    finally:
        worker.stopping.set()
        await asyncio.wait_for(task, 60)


def by_trace(exporter: InMemorySpanExporter, trace_id: int) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.context.trace_id == trace_id]


def named(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    matches = [s for s in spans if s.name == name]
    assert len(matches) == 1, [s.name for s in spans]
    return matches[0]


def parent_chain(span: ReadableSpan, spans: list[ReadableSpan]) -> list[str]:
    ids = {s.context.span_id: s for s in spans}
    chain = []
    while span.parent is not None and span.parent.span_id in ids:
        span = ids[span.parent.span_id]
        chain.append(span.name)
    return chain


def traceparent_trace_id(record: Any) -> int:
    return int(header_dict(record)["traceparent"].split("-")[1], 16)


@pytest.mark.asyncio
async def test_one_trace_from_http_predict_through_inference_to_the_reply(
    spans: InMemorySpanExporter,
    kafka_bootstrap: str,
    serving_repository: Path,
    shapes_images: tuple[Path, dict[str, list[dict[str, Any]]]],
) -> None:
    folder, truth = shapes_images
    name = next(n for n in sorted(truth) if n.endswith(".jpg") and truth[n])
    prefix = unique_prefix()
    async with in_process_worker(kafka_bootstrap, serving_repository, prefix):
        app = create_app(BridgeSettings(bootstrap=kafka_bootstrap, topic_prefix=prefix))
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://b") as http,
        ):
            await wait_for(lambda: app.state.backend.directory.names() == [MODEL], 60)
            response = await http.post(
                f"/models/{MODEL}/predict",
                files={"input_data": (name, (folder / name).read_bytes(), "image/jpeg")},
                headers={"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"},
                timeout=60,
            )
            assert response.status_code == 200, response.text
            assert response.json()["data"]["bounding-boxes"]
            reply_topic = app.state.backend.client.reply_topic
            (reply,) = await read_topic(kafka_bootstrap, reply_topic, expect=1, timeout_s=30)

    trace_id = int(CALLER_TRACE, 16)
    assert traceparent_trace_id(reply) == trace_id
    mine = by_trace(spans, trace_id)
    server = named(mine, "POST /models/{model_name}/predict")
    assert server.parent is not None and server.parent.span_id == int(CALLER_SPAN, 16)
    assert server.kind is trace.SpanKind.SERVER
    request_topic = f"{prefix}.requests.{MODEL}"
    inference = named(mine, "inference")
    chain = parent_chain(inference, mine)
    assert chain[:2] == [f"{request_topic} process", f"{request_topic} publish"], chain
    assert chain[-1] == server.name, chain
    assert inference.attributes is not None and inference.attributes["batch_size"] == 1
    for step in ("queue", "decode"):
        assert parent_chain(named(mine, step), mine)[0] == f"{request_topic} process"
    # The answer names the worker's reply span, a child of the same request span.
    reply_span = named(mine, f"{reply_topic} publish")
    assert int(header_dict(reply)["traceparent"].split("-")[2], 16) == reply_span.context.span_id
    assert parent_chain(reply_span, mine)[0] == f"{request_topic} process"


@pytest.mark.asyncio
async def test_a_raw_producers_traceparent_is_continued_by_the_worker(
    spans: InMemorySpanExporter,
    kafka_bootstrap: str,
    serving_repository: Path,
    shapes_images: tuple[Path, dict[str, list[dict[str, Any]]]],
) -> None:
    folder, truth = shapes_images
    name = next(n for n in sorted(truth) if n.endswith(".png") and truth[n])
    prefix = unique_prefix()
    trace_id, parent = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    reply_to = f"{prefix}.replies.raw"
    async with in_process_worker(kafka_bootstrap, serving_repository, prefix):
        await create_topic(kafka_bootstrap, reply_to)
        async with raw_producer(kafka_bootstrap) as producer:
            await producer.send_and_wait(
                f"{prefix}.requests.{MODEL}",
                (folder / name).read_bytes(),
                headers=headers(
                    correlation_id="raw-1",
                    reply_to=reply_to,
                    traceparent=f"00-{trace_id}-{parent}-01",
                    tracestate="vendor=abc",
                ),
            )
        (reply,) = await read_topic(kafka_bootstrap, reply_to, expect=1, timeout_s=60)
    assert traceparent_trace_id(reply) == int(trace_id, 16)
    assert header_dict(reply)["tracestate"] == "vendor=abc"
    mine = by_trace(spans, int(trace_id, 16))
    process = named(mine, f"{prefix}.requests.{MODEL} process")
    assert process.parent is not None and process.parent.span_id == int(parent, 16)
    assert process.parent.is_remote and process.kind is trace.SpanKind.CONSUMER
    assert {"queue", "decode", "inference", f"{reply_to} publish"} <= {s.name for s in mine}


def run_python(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_without_an_exporter_spans_cost_next_to_nothing_and_trace_context_passes_through() -> None:
    """A fresh process (this one has a provider installed above): no SDK set up."""
    out = run_python(
        """
import time
from opentelemetry.trace import SpanKind
from consumer.protocol import trace_context
from consumer.spans import RequestSpans
from consumer.settings import ConsumerSettings
from engines.tracing import configure_tracing
assert not configure_tracing(ConsumerSettings(), "t")
tp = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
headers = (("correlation-id", b"c"), ("traceparent", tp))
n = 20000
started = time.perf_counter()
for _ in range(n):
    s = RequestSpans("t.requests.m process", trace_context(headers), SpanKind.CONSUMER)
    s.child("queue", 0.0, 1.0); s.child("decode", 0.0, 1.0); s.child("inference", 0.0, 1.0)
    span, out = s.reply("t.results.m", [])
    span.end(); s.end()
print((time.perf_counter() - started) / n * 1e6)
print(dict(out)["traceparent"].decode())
"""
    )
    micros, passed_on = out.split()
    assert passed_on == "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    # Measured ~10 µs on a loaded 2-core box, against milliseconds of decode and inference.
    assert float(micros) < 200, micros


def test_the_jsonl_and_otlp_exporters_are_chosen_by_setting(tmp_path: Path) -> None:
    out = run_python(
        f"""
from opentelemetry import trace
from consumer.settings import ConsumerSettings
from engines.tracing import configure_tracing, tracer
settings = ConsumerSettings(trace_exporter="jsonl", trace_file={str(tmp_path / "spans.jsonl")!r})
assert configure_tracing(settings, "tfstream-consumer")
with tracer().start_as_current_span("hello"):
    pass
print(type(trace.get_tracer_provider()).__name__)
"""
    )
    assert out.strip() == "TracerProvider"
    (line,) = (tmp_path / "spans.jsonl").read_text().splitlines()
    span = json.loads(line)
    assert span["name"] == "hello"
    assert span["resource"]["attributes"]["service.name"] == "tfstream-consumer"
    # OTLP/HTTP to a collector stand-in that records what it is sent.
    out = run_python(
        """
import http.server, threading
from opentelemetry import trace
from http_bridge.settings import BridgeSettings
from engines.tracing import configure_tracing, tracer
paths = []
class Collector(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers["content-length"]))
        paths.append((self.path, self.headers["content-type"]))
        self.send_response(200); self.end_headers()
    def log_message(self, *args): pass
server = http.server.HTTPServer(("127.0.0.1", 0), Collector)
threading.Thread(target=server.serve_forever, daemon=True).start()
endpoint = f"http://127.0.0.1:{server.server_port}/v1/traces"
configure_tracing(BridgeSettings(trace_exporter="otlp", otlp_endpoint=endpoint), "b")
with tracer().start_as_current_span("hello"):
    pass
assert trace.get_tracer_provider().force_flush(10_000)
print(paths)
"""
    )
    assert out.strip() == "[('/v1/traces', 'application/x-protobuf')]"
