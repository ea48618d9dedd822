"""Where a lone request over Kafka spends its time, stage by stage (not part of `make bench`).

    python -m bench.lone_stages [--rounds 300] [--runs 2] [--image PATH]

Section 1's lone row gives one figure, served - raw, on a real model whose
engine call dwarfs and blurs the Kafka path. This starts a broker of its own and
one consumer on a simulated 1 ms engine, then times one `DetectClient.detect`
after another and splits each with the clocks already at hand: the client's
produce acknowledgement, the reply record's timestamp (set by the worker's
producer, in whole milliseconds: half a millisecond is added, so means are
right), the moment the client's reply reader has the record, and the reply's
own timing (arrival at the worker to the end of its engine call; its queue
includes the decode). Means over the rounds; one machine, one clock.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import producer_tools.client as client_module
from consumer import kafka_io
from consumer.protocol import Reply
from consumer.settings import KafkaClientSettings
from deploy.local.kafka import LocalKafkaCluster
from deploy.local.processes import ConsumerProcess

MODEL = "ssd_mobilenet_v2_bench"
Marks = dict[str, dict[str, float]]


def _instrument(marks: Marks) -> None:
    """Timestamps at the client's send and at its reply reader, by correlation id."""
    send = client_module.DetectClient._send

    async def timed_send(
        self: client_module.DetectClient,
        topic: str,
        value: bytes,
        key: bytes | None,
        headers: list[tuple[str, bytes]],
    ) -> None:
        cid = dict(headers).get("correlation-id", b"").decode()
        marks.setdefault(cid, {})["call"] = time.time()
        await send(self, topic, value, key, headers)
        marks[cid]["acked"] = time.time()

    async def timed_replies(self: client_module.DetectClient) -> None:
        async for records in kafka_io.follow(self.consumer, "replies"):
            now = time.time()
            for record in records:
                reply = Reply.from_json(record.value or b"")
                mark = marks.setdefault(reply.correlation_id or "", {})
                mark["replied"] = record.timestamp / 1000 + 0.0005
                mark["read"] = now
                mark["queue"] = reply.timing.queue_ms / 1000  # the decode included
                mark["decode"] = reply.timing.decode_ms / 1000
                mark["engine"] = reply.timing.inference_ms / 1000
                self._resolve(record.value)

    client_module.DetectClient._send = timed_send  # type: ignore[method-assign]
    client_module.DetectClient._read_replies = timed_replies  # type: ignore[method-assign]


async def _run(bootstrap: str, prefix: str, image: bytes, rounds: int, marks: Marks) -> None:
    settings = KafkaClientSettings(bootstrap=bootstrap, topic_prefix=prefix)
    async with client_module.DetectClient(settings, timeout_s=60) as client:
        for _ in range(30):  # connections, metadata, the worker's first batches
            await client.detect(MODEL, image)
        marks.clear()
        for _ in range(rounds):
            reply = await client.detect(MODEL, image)
            marks[reply.correlation_id or ""]["answered"] = time.time()


def _report(marks: Marks) -> None:
    rows = [m for m in marks.values() if "answered" in m and "replied" in m]

    def ms(stage: Callable[[dict[str, float]], float]) -> str:
        return f"{1000 * statistics.fmean(stage(m) for m in rows):6.2f} ms"

    print(f"{len(rows)} lone requests, means:")
    print("  call to answer                        ", ms(lambda m: m["answered"] - m["call"]))
    print("  call to the request's produce ack     ", ms(lambda m: m["acked"] - m["call"]))
    print(
        "  request hop, and the reply built      ",
        ms(lambda m: m["replied"] - m["call"] - m["queue"] - m["engine"]),
    )
    print("  worker: arrival to engine start       ", ms(lambda m: m["queue"] - m["decode"]))
    print("  worker: decode                        ", ms(lambda m: m["decode"]))
    print("  worker: engine call (1 ms simulated)  ", ms(lambda m: m["engine"]))
    print("  reply hop (record to client reader)   ", ms(lambda m: m["read"] - m["replied"]))
    print("  client: reader to detect() returning  ", ms(lambda m: m["answered"] - m["read"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--repository", type=Path, default=Path("models"))
    parser.add_argument("--image", type=Path, help="a JPEG (default: a demo camera frame)")
    args = parser.parse_args()
    if args.image is None:
        from deploy.local.demo import CAMERAS, write_camera_frames

        frames = Path(tempfile.mkdtemp(prefix="tfstream-lone-"))
        write_camera_frames(frames, CAMERAS["camera-1"], 0)
        args.image = sorted(frames.glob("*.jpg"))[0]
    image = args.image.read_bytes()
    marks: Marks = {}
    _instrument(marks)
    extra = {
        "TFSTREAM_MODELS": MODEL,
        "TFSTREAM_SIMULATE_BATCH_MS": "1",
        "TFSTREAM_LOG_LEVEL": "WARNING",
    }
    logs = Path(tempfile.mkdtemp(prefix="tfstream-lone-logs-"))
    with LocalKafkaCluster() as kafka:
        worker: Any = ConsumerProcess(
            kafka.bootstrap, args.repository, f"lone{os.getpid()}", logs, extra=extra
        ).start()
        try:
            worker.wait_ready(180)
            for _ in range(args.runs):
                asyncio.run(_run(kafka.bootstrap, worker.prefix, image, args.rounds, marks))
                _report(marks)
        finally:
            worker.stop()


if __name__ == "__main__":
    main()
