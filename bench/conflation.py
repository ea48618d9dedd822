"""A camera twice as fast as its worker, with and without `conflate: latest`:
`python -m bench.conflation`.

One worker with a simulated accelerator (`--simulate-batch-ms B`, batch 1, so
it serves 1000/B frames per second whatever the machine) and one camera
sending 2 x 1000/B frames per second with a key, for `--window-s` seconds.
Each row is a fresh worker on a fresh topic prefix (no backlog carried over).

What a viewer of the results topic cares about is how old the newest frame
it has boxes for is, measured two ways: "at answer", the age of each newly
newest answered frame when its answer arrives (its send-to-answer time), and
"seen", sampled every 100 ms whether an answer just came or not (so it also
counts the wait for the next answer, up to one more batch time). The rows
give p50 and p99 over the window and the sampled age at its end. Without
conflation the worker falls behind by half the camera's rate and the age
grows with the backlog; with it a frame waits at most for the call in
progress, then runs: about one to two batch times.

Row ids are stable (`conflation.off`, `conflation.on`) so the lead's report
can pick them up; `--json` writes the rows as JSON too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from bench.cpu import snapshot, usage
from bench.raw_engine import sample_jpegs
from consumer.protocol import Reply, Request, Topics
from deploy.local.kafka import LocalKafkaCluster
from deploy.local.processes import ConsumerProcess

MODEL = "ssd_mobilenet_v2_bench"
REPO_ROOT = Path(__file__).resolve().parents[1]
COMMAND = "python -m bench.conflation"
SAMPLE_S = 0.1


@dataclass
class ConflationRow:
    id: str
    conflate: bool
    window_s: float
    sent_per_s: float
    answers_per_s: float
    """Answers with boxes (the simulated engine finds none: successful answers)."""
    superseded_share: float
    """Superseded answers / all answers received in the window."""
    age_answer_p50_ms: float
    age_answer_p99_ms: float
    age_seen_p50_ms: float
    age_seen_p99_ms: float
    age_end_ms: float
    """The age of the newest answered frame when the camera stopped."""
    cpu: str = ""


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


@contextlib.contextmanager
def worker(bootstrap: str, prefix: str, logs: Path, batch_ms: float) -> Iterator[ConsumerProcess]:
    proc = ConsumerProcess(
        bootstrap,
        REPO_ROOT / "models",
        prefix,
        logs,
        extra={
            "TFSTREAM_MODELS": MODEL,
            "TFSTREAM_SIMULATE_BATCH_MS": str(batch_ms),
            "TFSTREAM_MAX_BATCH": "1",
            "TFSTREAM_PARTITIONS": "1",
            "TFSTREAM_LOG_LEVEL": "WARNING",
        },
    ).start()
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()


async def camera_row(
    bootstrap: str, proc: ConsumerProcess, conflate: bool, batch_ms: float, window_s: float
) -> ConflationRow:
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

    reading = asyncio.create_task(read())
    first = time.perf_counter()
    sampling = asyncio.create_task(sample())
    before = snapshot({"worker": [proc.proc.pid] if proc.proc else []})
    await send()
    window = time.perf_counter() - first
    sampling.cancel()
    after = snapshot({"worker": [proc.proc.pid] if proc.proc else []})
    in_window = [a for a in answers if a[0] - first <= window]
    reading.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await reading
    await producer.stop()
    await reader.stop()
    ok = sum(1 for _, _, success in in_window if success)
    return ConflationRow(
        id="conflation.on" if conflate else "conflation.off",
        conflate=conflate,
        window_s=round(window, 1),
        sent_per_s=round(len(sent_at) / window, 1),
        answers_per_s=round(ok / window, 1),
        superseded_share=round((len(in_window) - ok) / max(1, len(in_window)), 3),
        age_answer_p50_ms=round(percentile(at_answer, 50), 1),
        age_answer_p99_ms=round(percentile(at_answer, 99), 1),
        age_seen_p50_ms=round(percentile(ages, 50), 1),
        age_seen_p99_ms=round(percentile(ages, 99), 1),
        age_end_ms=round(ages[-1] if ages else float("nan"), 1),
        cpu=usage(before, after, max(1, ok)).text(),
    )


def markdown(rows: list[ConflationRow], batch_ms: float) -> str:
    lines = [
        f"One camera at {2 * 1000 / batch_ms:g} frames/s (twice what the worker serves: simulated "
        f"accelerator, {batch_ms:g} ms per call, batch 1), one worker, "
        f"{rows[0].window_s:g} s window. Age = now - send time of the newest frame answered "
        f"with boxes: when its answer arrives, and seen (sampled every {SAMPLE_S * 1000:g} ms). "
        f"Command: `{COMMAND}`.",
        "",
        "| row | conflate | sent/s | answers/s | superseded | age at answer p50 / p99 ms "
        "| age seen p50 / p99 ms | age at end ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| `{r.id}` | {'latest' if r.conflate else 'no'} | {r.sent_per_s:g} | "
            f"{r.answers_per_s:g} | {100 * r.superseded_share:.0f}% | "
            f"{r.age_answer_p50_ms:g} / {r.age_answer_p99_ms:g} | "
            f"{r.age_seen_p50_ms:g} / {r.age_seen_p99_ms:g} | {r.age_end_ms:g} |"
        )
    return "\n".join(lines) + "\n"


async def rows(bootstrap: str, work: Path, batch_ms: float, window_s: float) -> list[ConflationRow]:
    """Both rows against the broker at `bootstrap` (the test suite passes its own)."""
    out = []
    for conflate in (False, True):
        prefix = f"bench{uuid.uuid4().hex[:6]}"
        with worker(bootstrap, prefix, work, batch_ms) as proc:
            row = await camera_row(bootstrap, proc, conflate, batch_ms, window_s)
        print(json.dumps(asdict(row)), file=sys.stderr)
        out.append(row)
    return out


async def run(args: argparse.Namespace, work: Path) -> list[ConflationRow]:
    if args.bootstrap:
        return await rows(args.bootstrap, work, args.simulate_batch_ms, args.window_s)
    with LocalKafkaCluster(brokers=1, workdir=work / "kafka") as cluster:
        return await rows(cluster.bootstrap, work, args.simulate_batch_ms, args.window_s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.splitlines()[0])
    parser.add_argument(
        "--simulate-batch-ms", type=float, default=100, help="engine-call time (default 100)"
    )
    parser.add_argument("--window-s", type=float, default=30, help="camera run (default 30)")
    parser.add_argument("--bootstrap", help="an existing broker (default: start a local one)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-conflation-") as tmp:
        measured = asyncio.run(run(args, Path(tmp)))
    print(markdown(measured, args.simulate_batch_ms))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in measured], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
