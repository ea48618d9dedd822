"""Latest frame wins, against a real broker and worker processes.

The backlog is made for real and without timing: every frame is in the request
topic before the worker starts (start from nothing), so the worker's first fetch
after it joins holds all of them (40 frames, below --max-inflight).
"""

from __future__ import annotations

import signal
import uuid
from pathlib import Path
from typing import Any

import pytest

from deploy.local.processes import ConsumerProcess
from tests.support.models import match_truth
from tests.support.workers import (
    create_topic,
    headers,
    raw_producer,
    read_to_end,
    read_topic,
    replies_by_id,
    unique_prefix,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

Truth = dict[str, list[dict[str, Any]]]
MODEL = "shapes_tf2"
CAMERAS = ("cam-a", "cam-b", "cam-c")
PLAIN = "cam-plain"
FRAMES = 10


def start_worker(
    bootstrap: str, repository: Path, prefix: str, logs: Path, **extra: str
) -> ConsumerProcess:
    proc = ConsumerProcess(
        bootstrap,
        repository,
        prefix,
        logs,
        extra={"TFSTREAM_MODELS": MODEL, "TFSTREAM_MAX_BATCH": "8", **extra},
    ).start()
    proc.wait_ready()
    return proc


async def send_backlog(
    bootstrap: str, prefix: str, images: list[tuple[str, bytes]]
) -> tuple[str, dict[str, str]]:
    """Send FRAMES frames of each camera (interleaved) before any worker runs.

    Returns the reply topic and, per correlation id, the image name sent.
    """
    reply_to = f"{prefix}.replies.{uuid.uuid4().hex[:8]}"
    await create_topic(bootstrap, reply_to)
    # The request topic as a worker would create it (ConsumerProcess: 4 partitions).
    await create_topic(bootstrap, f"{prefix}.requests.{MODEL}", partitions=4)
    sent: dict[str, str] = {}
    async with raw_producer(bootstrap) as producer:
        for frame in range(FRAMES):
            for camera in (*CAMERAS, PLAIN):
                name, data = images[frame]
                cid = f"{camera}/{frame}"
                sent[cid] = name
                await producer.send(
                    f"{prefix}.requests.{MODEL}",
                    data,
                    key=camera.encode(),
                    headers=headers(
                        correlation_id=cid,
                        reply_to=reply_to,
                        conflate=None if camera == PLAIN else "latest",
                    ),
                )
        await producer.flush()
    return reply_to, sent


def kind(body: dict[str, Any]) -> str:
    return "boxes" if body["success"] else body["error"]["code"]


def check_kinds(replies: dict[str, list[dict[str, Any]]], sent: dict[str, str], truth: Truth):  # type: ignore[no-untyped-def]
    """Every id answered, all its answers of one kind, and the kind the one expected."""
    assert set(replies) == set(sent)
    kinds = {cid: {kind(body) for body in bodies} for cid, bodies in replies.items()}
    assert {cid: k for cid, k in kinds.items() if len(k) != 1} == {}
    expected = {
        cid: "boxes" if cid.startswith(PLAIN) or cid.endswith(f"/{FRAMES - 1}") else "superseded"
        for cid in sent
    }
    assert {cid: next(iter(k)) for cid, k in kinds.items()} == expected
    for cid, bodies in replies.items():
        if expected[cid] == "boxes":
            for body in bodies:
                assert match_truth(body["data"]["bounding-boxes"], truth[sent[cid]]) == []


def frames(shapes_images: tuple[Path, Truth]) -> list[tuple[str, bytes]]:
    folder, truth = shapes_images
    names = [n for n in sorted(truth) if n.endswith(".jpg") and truth[n]][:FRAMES]
    return [(n, (folder / n).read_bytes()) for n in names]


@pytest.mark.asyncio
async def test_a_backlog_answers_each_cameras_newest_frame_and_supersedes_the_rest(
    kafka_bootstrap: str,
    serving_repository: Path,
    shapes_images: tuple[Path, Truth],
    tmp_path: Path,
) -> None:
    prefix = unique_prefix()
    reply_to, sent = await send_backlog(kafka_bootstrap, prefix, frames(shapes_images))
    worker = start_worker(kafka_bootstrap, serving_repository, prefix, tmp_path)
    try:
        records = await read_topic(
            kafka_bootstrap,
            reply_to,
            expect=len(sent),
            until=lambda recs: set(replies_by_id(recs)) == set(sent),
        )
        replies = replies_by_id(records)
        check_kinds(replies, sent, shapes_images[1])
        for record in records:
            body = replies_by_id([record])
            (cid,) = body
            if kind(body[cid][0]) == "superseded":
                assert dict(record.headers)["error-code"] == b"superseded"
        # The superseded frames were never decoded or run: no decode or batch counted
        # for them. The plain camera's 10 frames and the 3 newest are all that ran.
        metrics = worker.metrics()
        decoded = next(
            float(line.split()[-1])
            for line in metrics.splitlines()
            if line.startswith("tfstream_decode_seconds_count")
        )
        assert decoded == FRAMES + len(CAMERAS), metrics
        # ...and none of them is a dead letter.
        dlq = await read_to_end(kafka_bootstrap, f"{worker.prefix}.dlq")  # all there is
        assert dlq == []
    finally:
        worker.stop()
    assert worker.proc is not None and worker.proc.returncode == 0, worker.log_tail()


@pytest.mark.asyncio
async def test_a_worker_killed_mid_way_and_replaced_loses_nothing_and_never_changes_a_verdict(
    kafka_bootstrap: str,
    serving_repository: Path,
    shapes_images: tuple[Path, Truth],
    tmp_path: Path,
) -> None:
    """The first worker never commits (a huge commit interval), so its replacement
    reads every frame again: the harshest case for duplicates. Each id may be
    answered twice, but never once with boxes and once `superseded`."""
    prefix, group = unique_prefix(), f"g-{uuid.uuid4().hex[:6]}"
    reply_to, sent = await send_backlog(kafka_bootstrap, prefix, frames(shapes_images))
    first = start_worker(
        kafka_bootstrap,
        serving_repository,
        prefix,
        tmp_path,
        TFSTREAM_GROUP=group,
        TFSTREAM_COMMIT_INTERVAL_MS="3600000",
    )
    second: ConsumerProcess | None = None
    try:
        before = await read_topic(kafka_bootstrap, reply_to, expect=1, timeout_s=60)
        first.signal(signal.SIGKILL)
        first.wait(10)
        assert before, first.log_tail()
        second = start_worker(
            kafka_bootstrap, serving_repository, prefix, tmp_path, TFSTREAM_GROUP=group
        )
        second_id = f"w-{second.name}"
        records = await read_topic(
            kafka_bootstrap,
            reply_to,
            expect=len(sent),
            timeout_s=180,
            until=lambda recs: (
                {
                    cid
                    for cid, bodies in replies_by_id(recs).items()
                    if any(b["worker"] == second_id for b in bodies)
                }
                == set(sent)
            ),
        )
        replies = replies_by_id(records)
        check_kinds(replies, sent, shapes_images[1])
        assert any(b["worker"] == f"w-{first.name}" for bs in replies.values() for b in bs)
    finally:
        if second is not None:
            second.stop()
        first.stop()
