"""`kafka_io.seek_to_time` on a real broker: where a shadow (`--shadow-from`) and
`tfstream-diff --since` start reading, and its bound on a topic that is gone."""

from __future__ import annotations

import time

import pytest
from aiokafka import TopicPartition

from consumer import kafka_io
from consumer.settings import KafkaClientSettings
from engines.errors import ServiceUnavailable
from tests.support.workers import create_topic, raw_producer, unique_prefix

pytestmark = [pytest.mark.kafka]


@pytest.mark.asyncio
async def test_partitions_start_at_the_first_record_from_then_on_or_at_their_end(
    kafka_bootstrap: str,
) -> None:
    topic = f"{unique_prefix()}.seek"
    await create_topic(kafka_bootstrap, topic)
    async with raw_producer(kafka_bootstrap) as producer:
        for i, at in enumerate((1_000, 2_000, 3_000)):
            await producer.send_and_wait(topic, str(i).encode(), timestamp_ms=at)
    settings = KafkaClientSettings(bootstrap=kafka_bootstrap)
    consumer = await kafka_io.started(kafka_io.consumer(settings, "test", group_id=None))
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await kafka_io.seek_to_time(consumer, [tp], 1_500, timeout_s=15)
        assert await consumer.position(tp) == 1
        await kafka_io.seek_to_time(consumer, [tp], 9_000, timeout_s=15)
        assert await consumer.position(tp) == 3  # after every record: its end
    finally:
        await consumer.stop()


@pytest.mark.asyncio
async def test_a_topic_that_is_gone_fails_in_time_instead_of_hanging(kafka_bootstrap: str) -> None:
    """aiokafka's offset look-ups wait for good on a partition that does not exist (a
    topic deleted after the assignment); a shadow's placement, retried in its
    rebalance listener, then hung silently, and the shadow never became ready."""
    settings = KafkaClientSettings(bootstrap=kafka_bootstrap)
    consumer = await kafka_io.started(kafka_io.consumer(settings, "test", group_id=None))
    try:
        gone = TopicPartition(f"{unique_prefix()}.never-created", 0)
        consumer.assign([gone])
        started = time.monotonic()
        with pytest.raises(ServiceUnavailable, match="never-created.*within 2s"):
            await kafka_io.seek_to_time(consumer, [gone], 0, timeout_s=2)
        assert time.monotonic() - started < 10
    finally:
        await consumer.stop()
