"""One measurement each: the raw engine, a replay window over Kafka, an HTTP load
window; and `compared`, the raw-before / rows / raw-after frame of a section."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.cpu import snapshot, usage
from bench.http_load import drive
from bench.lone import Served, http_served, pairs
from bench.processes import MODEL
from bench.raw_engine import measure
from bench.results import Bench, Measurement, Row
from engines.detector import Detector


async def raw(bench: Bench, detector: Detector, jpegs: list[bytes], batch: int) -> Measurement:
    seconds = bench.raw_seconds if batch > 1 else bench.raw_seconds * 0.6
    before = snapshot(bench.pids)
    result = measure(detector, jpegs, batch, seconds)
    images = result.batch * result.batches
    return Measurement(
        result.images_per_s,
        result.p50_ms,
        result.p99_ms,
        images,
        note="latency of one engine call of the whole batch",
        cpu=usage(before, snapshot(bench.pids), images + 2 * batch),  # + the two warm-up calls
    )


async def replay(
    bench: Bench, bootstrap: str, prefix: str, folder: Path, concurrency: int, warmup: int
) -> Measurement:
    """Warm up, then one `--max` replay window with the CPU of every process measured."""
    from consumer.settings import KafkaClientSettings
    from producer_tools.client import DetectClient
    from producer_tools.replay import ReplaySettings, run_replay

    def settings(**values: Any) -> ReplaySettings:
        return ReplaySettings(
            bootstrap=bootstrap,
            topic_prefix=prefix,
            model=MODEL,
            source=str(folder),
            max=True,
            concurrency=concurrency,
            progress=False,
            answer_timeout_s=60,
            **values,
        )

    client_settings = KafkaClientSettings(bootstrap=bootstrap, topic_prefix=prefix)
    async with DetectClient(client_settings, timeout_s=60) as client:
        await run_replay(settings(count=warmup), client=client, progress=None)
        before = snapshot(bench.pids)
        run = await run_replay(settings(duration_s=bench.seconds), client=client, progress=None)
        after = snapshot(bench.pids)
    report = run.to_dict()
    lat = report["latency_ms"]
    batches = report["batch_sizes"]
    mean_batch = sum(int(k) * v for k, v in batches.items()) / max(1, sum(batches.values()))
    counts = sorted(report["workers"].values(), reverse=True)
    shares = "/".join(f"{100 * c / max(1, sum(counts)):.0f}%" for c in counts)
    note = f"mean batch {mean_batch:.1f}" + (
        f", answers per worker {shares}" if len(counts) > 1 else ""
    )
    return Measurement(
        report["throughput"],
        lat["p50"],
        lat["p99"],
        report["sent"],
        sum(report["errors"].values()) + report["timeouts"],
        note,
        usage(before, after, report["answered"]),
        report["worker_timing_ms"],
    )


async def http(
    bench: Bench, url: str, images: list[tuple[str, bytes]], clients: int, model: str = MODEL
) -> Measurement:
    marks = []
    result = await drive(
        f"{url}/models/{model}/predict",
        images,
        clients,
        bench.seconds,
        warmup=max(4, clients),
        on_start=lambda: marks.append(snapshot(bench.pids)),
    )
    errors = sum(result.errors.values())
    return Measurement(
        result.throughput,
        result.p(50),
        result.p(99),
        result.answered + errors,
        errors,
        ", ".join(f"{k} {v}" for k, v in result.errors.items()),
        usage(marks[0], snapshot(bench.pids), result.answered),
    )


def lone_rounds(bench: Bench) -> int:
    """Pairs per lone-request row: 4 per second of the row window, at least 30."""
    return max(30, int(bench.seconds * 4))


async def lone(bench: Bench, detector: Detector, jpegs: list[bytes], served: Served) -> Measurement:
    """A lone request in A/B pairs with the raw engine (`bench.lone.pairs`), the CPU of
    every process of the row measured over the pairs."""
    rounds = lone_rounds(bench)
    before = snapshot(bench.pids)
    result = await pairs(detector, jpegs, served, rounds)
    cpu = usage(before, snapshot(bench.pids), rounds)
    return Measurement(
        1000 / max(1e-9, result.served_mean_ms),
        result.served_p50_ms,
        result.served_p99_ms,
        rounds,
        note=(
            f"A/B pairs with the raw engine: served - raw p50 {result.diff_p50_ms:+.2f} ms, "
            f"quartiles {result.diff_p25_ms:+.2f} / {result.diff_p75_ms:+.2f} ms; "
            f"raw p50 {result.raw_p50_ms:.1f} ms, raw CPU {result.raw_cpu_ms:.1f} ms/call "
            "('bench' CPU includes the raw calls)"
        ),
        cpu=cpu,
        overhead_ms=result.diff_p50_ms,
    )


@contextlib.asynccontextmanager
async def kafka_lone_served(bootstrap: str, prefix: str) -> AsyncIterator[Served]:
    """One `DetectClient.detect` per call, as `tfstream-replay` sends."""
    from consumer.settings import KafkaClientSettings
    from producer_tools.client import DetectClient

    settings = KafkaClientSettings(bootstrap=bootstrap, topic_prefix=prefix)
    async with DetectClient(settings, timeout_s=60) as client:

        async def call(index: int, data: bytes) -> None:
            reply = await client.detect(MODEL, data, image_name=f"frame_{index:03d}.jpg")
            if reply.error is not None:
                raise RuntimeError(f"served call failed: {reply.error}")

        yield call


@contextlib.asynccontextmanager
async def http_lone_served(url: str) -> AsyncIterator[Served]:
    """A predict of the bench model per call, by `bench.lone.http_served` (`PlainHttp`)."""
    async with http_served(f"{url}/models/{MODEL}/predict") as served:
        yield served


@dataclass(frozen=True)
class Planned:
    """A row a section will measure and compare with the raw engine."""

    id: str
    name: str
    single: bool
    """A single-request row: its p50 is compared with raw batch 1 (overhead)."""
    run: Callable[[], Awaitable[Measurement]]


async def compared(
    bench: Bench,
    title: str,
    detector: Detector,
    jpegs: list[bytes],
    planned: list[Planned],
    raw_prefix: str,
) -> list[Row]:
    """Raw batch 1 and 8, the rows, raw batch 1 and 8 again; ratios against the raw means.
    Raw rows get ids `<raw_prefix>-raw-b<batch>-<before|after>`."""
    print(title, flush=True)

    async def raw_pair(when: str) -> list[Row]:
        return [
            Row(
                f"{raw_prefix}-raw-b{batch}-{when}",
                title,
                f"raw engine, batch {batch} ({when})",
                await bench.quietest(lambda b=batch: raw(bench, detector, jpegs, b), attempts=3),
                kind="raw",
            ).show()
            for batch in (1, 8)
        ]

    before = await raw_pair("before")
    measured = [(plan, await bench.quietest(plan.run)) for plan in planned]
    after = await raw_pair("after")
    ref_b1 = bench.reference(before[0].m, after[0].m, lambda m: m.p50_ms)
    ref_b8 = bench.reference(before[1].m, after[1].m, lambda m: m.images_per_s)
    bench.references[title] = f"raw batch 8 {ref_b8:.2f} images/s, raw batch 1 p50 {ref_b1:.1f} ms"
    for raw_row in (*before, *after):
        raw_row.vs_raw = raw_row.m.images_per_s / ref_b8
    rows = [
        Row(
            plan.id,
            title,
            plan.name,
            m,
            vs_raw=None if m.overhead_ms is not None else m.images_per_s / ref_b8,
            overhead_ms=m.overhead_ms
            if m.overhead_ms is not None
            else (m.p50_ms - ref_b1)
            if plan.single
            else None,
        ).show()
        for plan, m in measured
    ]
    print(
        f"  reference: raw batch 8 {ref_b8:.2f} images/s, raw batch 1 p50 {ref_b1:.1f} ms",
        flush=True,
    )
    return [*before, *after, *rows]
