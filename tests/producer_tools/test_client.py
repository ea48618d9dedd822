"""DetectClient against a real broker: answers, timeouts, and at-least-once duplicates.

The timeout and duplicate tests need no worker: they ask a model whose request
topic exists but that nobody serves, read the request off the topic like a
worker would, and answer it by hand, early, late or twice.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from consumer.protocol import Reply, Timing, detection_data
from consumer.settings import KafkaClientSettings
from deploy.local.processes import ConsumerProcess
from engines.errors import RequestTimeout
from producer_tools.client import DetectClient
from tests.support.models import match_truth
from tests.support.workers import (
    create_topic,
    header_dict,
    raw_producer,
    read_topic,
    unique_prefix,
    wait_for,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

Truth = dict[str, list[dict[str, Any]]]


def settings(bootstrap: str, prefix: str) -> KafkaClientSettings:
    return KafkaClientSettings(bootstrap=bootstrap, topic_prefix=prefix)


async def request_on(bootstrap: str, topic: str) -> dict[str, str]:
    """The headers of the (only) request on `topic`, read as a worker would."""
    (record,) = await read_topic(bootstrap, topic, expect=1, timeout_s=30)
    return header_dict(record)


async def answer(bootstrap: str, topic: str, reply: Reply) -> None:
    async with raw_producer(bootstrap) as producer:
        await producer.send_and_wait(topic, reply.to_json(), headers=reply.headers())


@pytest.mark.asyncio
async def test_detect_answers_the_boxes_of_the_image(
    worker: ConsumerProcess, shapes_images: tuple[Path, Truth]
) -> None:
    folder, truth = shapes_images
    name = next(n for n in sorted(truth) if n.endswith(".jpg") and len(truth[n]) >= 2)
    async with DetectClient(settings(worker.bootstrap, worker.prefix), timeout_s=60) as client:
        reply = await client.detect("shapes_tf2", (folder / name).read_bytes(), image_name=name)
        assert client.stats.sent == 1 and client.stats.answered == 1
    assert reply.success, reply.error
    assert reply.worker == f"w-{worker.name}" and reply.timing.batch_size >= 1
    assert reply.data is not None and reply.data["ImageName"] == name
    assert match_truth(reply.data["bounding-boxes"], truth[name]) == []


@pytest.mark.asyncio
async def test_no_answer_times_out_in_time_and_the_late_answer_is_dropped(
    kafka_bootstrap: str,
) -> None:
    prefix = unique_prefix()
    await create_topic(kafka_bootstrap, f"{prefix}.requests.ghost")
    async with DetectClient(settings(kafka_bootstrap, prefix), timeout_s=1.0) as client:
        started = time.monotonic()
        with pytest.raises(RequestTimeout):
            await client.detect("ghost", b"not even an image")
        elapsed = time.monotonic() - started
        assert 0.95 <= elapsed < 2.5
        assert client.stats.timed_out == 1 and client.stats.answered == 0

        headers = await request_on(kafka_bootstrap, f"{prefix}.requests.ghost")
        assert headers["reply-to"] == client.reply_topic
        assert int(headers["deadline-ms"]) <= time.time() * 1000  # nobody should run it any more
        late = Reply(
            headers["correlation-id"], "ghost", data=detection_data([], None, 1, 1), worker="late"
        )
        await answer(kafka_bootstrap, client.reply_topic, late)
        await wait_for(lambda: client.stats.duplicates == 1, timeout_s=30)
        assert client.stats.answered == 0


@pytest.mark.asyncio
async def test_a_second_answer_for_one_id_is_counted_and_dropped(kafka_bootstrap: str) -> None:
    prefix = unique_prefix()
    await create_topic(kafka_bootstrap, f"{prefix}.requests.ghost")
    async with DetectClient(settings(kafka_bootstrap, prefix), timeout_s=60) as client:
        call = asyncio.create_task(client.detect("ghost", b"image"))
        headers = await request_on(kafka_bootstrap, f"{prefix}.requests.ghost")
        data = detection_data([], None, 1, 1)
        first = Reply(
            headers["correlation-id"],
            "ghost",
            data=data,
            timing=Timing(batch_size=1),
            worker="first",
        )
        second = Reply(
            headers["correlation-id"],
            "ghost",
            data=data,
            timing=Timing(batch_size=1),
            worker="second",
        )
        async with raw_producer(kafka_bootstrap) as producer:
            for reply in (first, second):  # in order, on the one partition of the reply topic
                await producer.send_and_wait(
                    client.reply_topic, reply.to_json(), headers=reply.headers()
                )
        reply = await asyncio.wait_for(call, 30)
        assert reply.worker == "first"
        await wait_for(lambda: client.stats.duplicates == 1, timeout_s=30)
        assert client.stats.answered == 1 and client.stats.timed_out == 0
