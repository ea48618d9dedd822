"""`producer_tools.client.tracking_events` against a real broker: each event once
(a repeat, written again by a worker that died before its camera's state, is
dropped by id), one camera's events only when asked, a record that is no event
skipped. The kill test (tests/consumer/test_tracking_kafka.py) only meets repeats
when a kill falls between an event and its state, which it cannot aim at."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import pytest

from consumer.protocol import Topics
from consumer.settings import KafkaClientSettings
from producer_tools.client import tracking_events
from tests.support.workers import create_topic, raw_producer, unique_prefix

pytestmark = pytest.mark.kafka


def _event(event_id: str, camera: str, offset: int) -> dict[str, Any]:
    return {
        "id": event_id, "camera": camera, "kind": "enter", "target": "bay",
        "class": "red rectangle", "track_id": 1, "dwell_s": None, "timestamp_s": 1.0,
        "position": {"topic": "t.requests.m", "partition": 0, "offset": offset},
    }  # fmt: skip


async def _first(settings: KafkaClientSettings, n: int, camera: str | None) -> list[Any]:
    got: list[Any] = []
    stream = tracking_events(settings, "m", camera=camera)
    async with contextlib.aclosing(stream), asyncio.timeout(30):
        async for event in stream:
            got.append(event)
            if len(got) == n:
                break
    return got


@pytest.mark.asyncio
async def test_each_event_once_and_one_camera_s_when_asked(kafka_bootstrap: str) -> None:
    prefix = unique_prefix()
    topic = Topics(prefix).events("m")
    await create_topic(kafka_bootstrap, topic)
    a1, b1, a2 = _event("a1", "cam-a", 1), _event("b1", "cam-b", 1), _event("a2", "cam-a", 2)
    sent = [(b"cam-a", a1), (b"cam-a", a1), (b"cam-b", b1), (b"cam-a", "not json"), (b"cam-a", a2)]
    async with raw_producer(kafka_bootstrap) as producer:
        for key, value in sent:
            await producer.send_and_wait(topic, json.dumps(value).encode(), key=key)
    settings = KafkaClientSettings(bootstrap=kafka_bootstrap, topic_prefix=prefix)
    # One event past the three would be the repeat of a1: the stream must wait instead.
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(8):
            await _first(settings, 4, None)
    assert await _first(settings, 3, None) == [a1, b1, a2]
    assert await _first(settings, 2, "cam-a") == [a1, a2]
