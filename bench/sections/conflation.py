"""Section 6: a camera twice as fast as its worker, with and without `conflate: latest`.

One worker with a simulated accelerator (`--simulate-batch-ms B`, batch 1, so
it serves 1000/B frames per second whatever the machine) and one camera
sending 2 x 1000/B frames per second with a key, for a window of twice the
run's `--seconds` (30 s by default). Each row is a fresh worker on a fresh
topic prefix (no backlog carried over).

What a viewer of the results topic cares about is how old the newest frame
it has boxes for is, measured two ways: "at answer", the age of each newly
newest answered frame when its answer arrives (its send-to-answer time), and
"seen", sampled every 100 ms whether an answer just came or not (so it also
counts the wait for the next answer, up to one more batch time). The rows
give p50 and p99 over the window and the sampled age at its end. Without
conflation the worker falls behind by half the camera's rate and the age
grows with the backlog; with it a frame waits at most for the call in
progress, then runs: about one to two batch times.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from bench.context import Context
from bench.cpu import snapshot, usage
from bench.processes import MODEL, pids, worker_env
from bench.raw_engine import sample_jpegs
from bench.results import Measurement, Row, Target
from consumer.protocol import Reply, Request, Topics
from deploy.local.processes import ConsumerProcess
from producer_tools.report import percentile

BATCH_MS = 100.0
"""The simulated engine call: the worker serves 10 frames/s, the camera sends 20."""
SAMPLE_S = 0.1
OFF, ON = "conflation.off", "conflation.on"

SENT = "sent/s"
SUPERSEDED = "superseded %"
AGE_ANSWER_P50 = "age at answer p50 ms"
AGE_ANSWER_P99 = "age at answer p99 ms"
AGE_SEEN_P50 = "age seen p50 ms"
AGE_SEEN_P99 = "age seen p99 ms"
AGE_END = "age at end ms"

TARGETS = [
    Target(
        "conflate: latest, age of the newest answered frame at answer, p50 (2 engine calls)",
        ON,
        AGE_ANSWER_P50,
        2 * BATCH_MS,
        False,
        " ms",
    ),
]


def title(batch_ms: float) -> str:
    return (
        f"6. Camera conflation: one camera at {2 * 1000 / batch_ms:g} frames/s, one worker "
        f"(simulated accelerator, {batch_ms:g} ms per call, batch 1)"
    )


@contextlib.contextmanager
def worker(
    bootstrap: str, repository: Path, prefix: str, logs: Path, batch_ms: float
) -> Iterator[ConsumerProcess]:
    extra = worker_env(simulate_batch_ms=batch_ms, max_batch=1, partitions=1)
    proc = ConsumerProcess(bootstrap, repository, prefix, logs, extra=extra).start()
    try:
        proc.wait_ready(timeout_s=240)
        yield proc
    finally:
        proc.stop()


async def camera_row(
    bootstrap: str, proc: ConsumerProcess, conflate: bool, batch_ms: float, window_s: float
) -> Row:
    topics = Topics(proc.prefix)
    fps = 2 * 1000 / batch_ms
    frames = sample_jpegs(16, 320, 240)
    sent_at: dict[str, float] = {}
    answers: list[tuple[float, str, bool]] = []  # (arrival, correlation id, success)
    reader = AIOKafkaConsumer(
        topics.results(MODEL), bootstrap_servers=bootstrap, auto_offset_reset="latest"
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    await reader.start()
    await producer.start()
    # A frame before the window: the reader is positioned and the worker has its partition.
    warm_up = Request(MODEL, "warm-up", b"").headers()
    await producer.send_and_wait(topics.requests(MODEL), frames[0], key=b"warm-up", headers=warm_up)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(reader.getone(), 60)

    at_answer: list[float] = []
    newest = -1.0

    async def read() -> None:
        nonlocal newest
        async for record in reader:
            reply = Reply.from_json(record.value or b"")
            if reply.correlation_id in sent_at:
                now = time.perf_counter()
                answers.append((now, reply.correlation_id, reply.success))
                sent = sent_at[reply.correlation_id]
                if reply.success and sent > newest:
                    newest = sent
                    at_answer.append((now - sent) * 1000)

    async def send() -> None:
        started = time.perf_counter()
        for i in range(int(window_s * fps)):
            await asyncio.sleep(max(0.0, started + i / fps - time.perf_counter()))
            cid = f"f{i}"
            request = Request(MODEL, cid, b"", conflate=conflate)
            sent_at[cid] = time.perf_counter()
            await producer.send(
                topics.requests(MODEL),
                frames[i % len(frames)],
                key=b"camera-1",
                headers=request.headers(),
            )

    ages: list[float] = []

    async def sample() -> None:
        while True:
            await asyncio.sleep(SAMPLE_S)
            now = time.perf_counter()
            ages.append((now - (newest if newest >= 0 else first)) * 1000)

    roles = {"worker": pids([proc])}
    reading = asyncio.create_task(read())
    first = time.perf_counter()
    sampling = asyncio.create_task(sample())
    before = snapshot(roles)
    await send()
    window = time.perf_counter() - first
    sampling.cancel()
    after = snapshot(roles)
    in_window = [a for a in answers if a[0] - first <= window]
    reading.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await reading
    await producer.stop()
    await reader.stop()
    ok = sum(1 for _, _, success in in_window if success)
    m = Measurement(
        ok / window,
        math.nan,
        math.nan,
        len(sent_at),
        note=f"{'conflate: latest' if conflate else 'no conflation'}, {window:.1f} s window",
        cpu=usage(before, after, max(1, ok)),
    )
    return Row(
        ON if conflate else OFF,
        title(batch_ms),
        f"conflate: {'latest' if conflate else 'no'} (images/s: answers with boxes)",
        m,
        extra={
            SENT: len(sent_at) / window,
            SUPERSEDED: 100 * (len(in_window) - ok) / max(1, len(in_window)),
            AGE_ANSWER_P50: percentile(at_answer, 50),
            AGE_ANSWER_P99: percentile(at_answer, 99),
            AGE_SEEN_P50: percentile(ages, 50),
            AGE_SEEN_P99: percentile(ages, 99),
            AGE_END: ages[-1] if ages else math.nan,
        },
    ).show()


async def camera_rows(
    bootstrap: str, repository: Path, logs: Path, batch_ms: float, window_s: float
) -> list[Row]:
    """Both rows, each with a fresh worker on a fresh prefix (the test suite calls this
    with its own broker)."""
    print(title(batch_ms), flush=True)
    rows = []
    for conflate in (False, True):
        prefix = f"bench{uuid.uuid4().hex[:6]}"
        with worker(bootstrap, repository, prefix, logs, batch_ms) as proc:
            rows.append(await camera_row(bootstrap, proc, conflate, batch_ms, window_s))
    return rows


async def conflation(ctx: Context) -> list[Row]:
    return await camera_rows(
        ctx.bootstrap, ctx.repository, ctx.logs, BATCH_MS, 2 * ctx.bench.seconds
    )
