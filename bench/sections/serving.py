"""Sections 1-3: what serving over Kafka, over HTTP+Kafka and over embedded HTTP
keeps of the raw engine, on the real bench model.

Throughput rows (16 in flight) are compared with raw batch 8 measured before
and after them. Lone-request rows alternate one raw call and one served call of
the same image (`bench.lone`) and report the median of the per-pair
differences: a raw reference measured a minute apart moves by more than the
overhead on this shared machine."""

from __future__ import annotations

from bench.context import Context
from bench.lone import client_costs
from bench.measure import (
    Planned,
    compared,
    http,
    http_lone_served,
    kafka_lone_served,
    lone,
    replay,
)
from bench.processes import MODEL, bridge, consumers, pids, worker_env
from bench.results import Measurement, Row, Target

KAFKA_16 = "kafka-16"
KAFKA_1 = "kafka-1"
HTTP_KAFKA_16 = "http-kafka-16"
HTTP_KAFKA_1 = "http-kafka-1"
EMBEDDED_16 = "embedded-16"
EMBEDDED_1 = "embedded-1"

TARGETS = [
    Target("Kafka replay (16 in flight): throughput / raw batch 8", KAFKA_16, "vs_raw", 0.95, True),
    Target(
        "HTTP embedded, 16 clients: throughput / raw batch 8", EMBEDDED_16, "vs_raw", 0.95, True
    ),
    Target(
        "HTTP over Kafka, 16 clients: throughput / raw batch 8", HTTP_KAFKA_16, "vs_raw", 0.92, True
    ),
    Target(
        "HTTP embedded, lone request: p50 of (served - raw) in A/B pairs",
        EMBEDDED_1,
        "overhead_ms",
        3.0,
        False,
        " ms",
    ),
    Target(
        "Kafka, lone request: p50 of (served - raw) in A/B pairs",
        KAFKA_1,
        "overhead_ms",
        8.0,
        False,
        " ms",
    ),
    Target(
        "HTTP over Kafka, lone request: p50 of (served - raw) in A/B pairs",
        HTTP_KAFKA_1,
        "overhead_ms",
        8.0,
        False,
        " ms",
    ),
]


async def _http_lone(ctx: Context, url: str) -> Measurement:
    async with http_lone_served(url) as served:
        measured = await lone(ctx.bench, ctx.detector, ctx.jpegs, served)
    by_httpx, by_plain = await client_costs(url)
    measured.note += (
        f"; client: one keep-alive connection, request built by hand (GET /health/live "
        f"p50 {by_plain:.2f} ms with it, {by_httpx:.2f} ms with httpx)"
    )
    return measured


async def _kafka_lone(ctx: Context) -> Measurement:
    async with kafka_lone_served(ctx.bootstrap, "bench") as served:
        return await lone(ctx.bench, ctx.detector, ctx.jpegs, served)


async def kafka_path(ctx: Context) -> list[Row]:
    """1. tfstream-replay into one consumer; 2. the HTTP bridge in front of the same consumer."""
    bench, folder = ctx.bench, ctx.folder
    with consumers(ctx.bootstrap, ctx.repository, "bench", ctx.logs, 1, worker_env()) as workers:
        ctx.measure_cpu_of(consumer=pids(workers))
        rows = await compared(
            bench,
            "1. Kafka path: tfstream-replay --max into one consumer process",
            ctx.detector,
            ctx.jpegs,
            [
                Planned(
                    KAFKA_16,
                    "Kafka replay, 16 in flight",
                    False,
                    lambda: replay(bench, ctx.bootstrap, "bench", folder, 16, 16),
                ),
                Planned(
                    KAFKA_1,
                    "Kafka, lone request (A/B pairs with raw)",
                    True,
                    lambda: _kafka_lone(ctx),
                ),
            ],
            raw_prefix="kafka",
        )
        with bridge(ctx.logs, bootstrap=ctx.bootstrap, topic_prefix="bench") as over_kafka:
            assert over_kafka.proc is not None
            ctx.measure_cpu_of(consumer=pids(workers), bridge=[over_kafka.proc.pid])
            rows += await compared(
                bench,
                "2. HTTP bridge over Kafka: tfstream-bridge --bootstrap, the same consumer",
                ctx.detector,
                ctx.jpegs,
                [
                    Planned(
                        HTTP_KAFKA_16,
                        "HTTP over Kafka, 16 clients",
                        False,
                        lambda: http(bench, over_kafka.url, ctx.images, 16),
                    ),
                    Planned(
                        HTTP_KAFKA_1,
                        "HTTP over Kafka, lone request (A/B pairs with raw)",
                        True,
                        lambda: _http_lone(ctx, over_kafka.url),
                    ),
                ],
                raw_prefix="http-kafka",
            )
    return rows


async def embedded(ctx: Context) -> list[Row]:
    """3. The HTTP bridge with the pipeline in its own process, no Kafka."""
    with bridge(ctx.logs, repository=ctx.repository, models=MODEL) as local:
        assert local.proc is not None
        ctx.measure_cpu_of(with_broker=False, bridge=[local.proc.pid])
        return await compared(
            ctx.bench,
            "3. HTTP bridge embedded: tfstream-bridge without Kafka",
            ctx.detector,
            ctx.jpegs,
            [
                Planned(
                    EMBEDDED_16,
                    "HTTP embedded, 16 clients",
                    False,
                    lambda: http(ctx.bench, local.url, ctx.images, 16),
                ),
                Planned(
                    EMBEDDED_1,
                    "HTTP embedded, lone request (A/B pairs with raw)",
                    True,
                    lambda: _http_lone(ctx, local.url),
                ),
            ],
            raw_prefix="embedded",
        )
