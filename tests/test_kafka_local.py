"""The real broker the suite runs against behaves like the production one.

These pin what the serving code relies on: large messages with headers, consumer
groups that resume from a manual commit, and a replicated topic that survives a
broker crash. A change to the local broker config, or a Kafka or aiokafka
upgrade that breaks one of them, then fails here with a clear name instead of
as a confusing timeout in a consumer test.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
import uuid
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import ConsumerRecord

from deploy.local.kafka import MAX_MESSAGE_BYTES, LocalKafkaCluster
from tests.support.workers import describe_partitions

pytestmark = pytest.mark.kafka

# Larger than Kafka's 1 MiB default everywhere it matters, below the raised 16 MiB.
LARGE_VALUE_BYTES = 9 * 1024 * 1024


def _unique(prefix: str) -> str:
    """Unique names keep tests independent and re-runnable against a shared broker."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def _create_topic(bootstrap: str, name: str, partitions: int, replication: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        response = await admin.create_topics([NewTopic(name, partitions, replication)])
    finally:
        await admin.close()
    errors = [(topic, code) for topic, code, *_ in response.topic_errors if code != 0]
    assert not errors, f"create_topics failed: {errors}"


def _large_producer(bootstrap: str) -> AIOKafkaProducer:
    """Client-side limits must be raised too; the broker's alone are not enough."""
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", max_request_size=MAX_MESSAGE_BYTES
    )


def _consumer(bootstrap: str, topic: str, group_id: str | None) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group_id,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        fetch_max_bytes=2 * MAX_MESSAGE_BYTES,
        max_partition_fetch_bytes=MAX_MESSAGE_BYTES,
    )


async def _consume(consumer: AIOKafkaConsumer, count: int, timeout_s: float = 60) -> list[Any]:
    """getone() one record at a time, so nothing beyond `count` is handed out."""
    async with asyncio.timeout(timeout_s):
        return [await consumer.getone() for _ in range(count)]


async def _produce(bootstrap: str, topic: str, values: list[bytes], partitions: int = 1) -> None:
    producer = _large_producer(bootstrap)
    await producer.start()
    try:
        sends = [
            await producer.send(topic, value, partition=i % partitions)
            for i, value in enumerate(values)
        ]
        await asyncio.gather(*sends)
    finally:
        await producer.stop()


@pytest.mark.asyncio
async def test_large_message_with_headers_round_trips(kafka_bootstrap: str) -> None:
    """A 9 MiB value passes only if message.max.bytes was raised on the broker
    (the topic is created without any size override)."""
    topic = _unique("large")
    await _create_topic(kafka_bootstrap, topic, partitions=1, replication=1)
    value = os.urandom(LARGE_VALUE_BYTES)
    headers = [("content-type", b"image/jpeg"), ("request-id", uuid.uuid4().hex.encode())]

    producer = _large_producer(kafka_bootstrap)
    await producer.start()
    try:
        sent = await producer.send_and_wait(topic, value, key=b"image-1", headers=headers)
    finally:
        await producer.stop()

    consumer = _consumer(kafka_bootstrap, topic, group_id=None)
    await consumer.start()
    try:
        (record,) = await _consume(consumer, 1)
    finally:
        await consumer.stop()

    assert (record.offset, record.key) == (sent.offset, b"image-1")
    assert list(record.headers) == headers
    # Compare digests: a failed 9 MiB bytes comparison would flood the report.
    assert hashlib.sha256(record.value).hexdigest() == hashlib.sha256(value).hexdigest()


@pytest.mark.asyncio
async def test_manual_commit_is_where_the_group_resumes(kafka_bootstrap: str) -> None:
    """Records consumed but not committed must be redelivered to the group."""
    topic, group = _unique("commit"), _unique("group")
    await _create_topic(kafka_bootstrap, topic, partitions=1, replication=1)
    await _produce(kafka_bootstrap, topic, [str(i).encode() for i in range(10)])
    partition = TopicPartition(topic, 0)

    first = _consumer(kafka_bootstrap, topic, group)
    await first.start()
    try:
        records = await _consume(first, 6)
        # Commit only the first 4 of the 6 records read: 4 and 5 are "in flight".
        await first.commit({partition: records[3].offset + 1})
    finally:
        await first.stop()

    second = _consumer(kafka_bootstrap, topic, group)
    await second.start()
    try:
        assert await second.committed(partition) == 4
        resumed = await _consume(second, 6)
    finally:
        await second.stop()

    assert [r.value for r in resumed] == [str(i).encode() for i in range(4, 10)]


@pytest.mark.asyncio
@pytest.mark.timeout(240)
@pytest.mark.kafka_itself
async def test_replicated_topic_survives_a_broker_crash(kafka_cluster3: LocalKafkaCluster) -> None:
    """kill -9 the leader of a RF=3 topic: committed data, new writes (acks=all,
    min ISR 2) and the consumer group all carry on with fresh clients."""
    cluster = kafka_cluster3
    topic, group = _unique("replicated"), _unique("group")
    await _create_topic(cluster.bootstrap, topic, partitions=3, replication=3)
    await _produce(cluster.bootstrap, topic, [b"before-%d" % i for i in range(6)], partitions=3)
    await _consume_and_commit(cluster.bootstrap, topic, group, count=6)

    partitions = await describe_partitions(cluster.bootstrap, topic)
    assert all(len(p["isr"]) == 3 for p in partitions), partitions
    victim = partitions[0]["leader"] - 1  # node ids are index + 1
    cluster.kill_broker(victim)

    await _produce(cluster.bootstrap, topic, [b"after-%d" % i for i in range(6)], partitions=3)
    after = await _consume_and_commit(cluster.bootstrap, topic, group, count=6)
    assert sorted(r.value for r in after) == [b"after-%d" % i for i in range(6)]

    cluster.start_broker(victim)
    await _wait_for_full_isr(cluster.bootstrap, topic, replicas=3, timeout_s=60)


async def _consume_and_commit(
    bootstrap: str, topic: str, group: str, count: int
) -> list[ConsumerRecord[Any, Any]]:
    consumer = _consumer(bootstrap, topic, group)
    await consumer.start()
    try:
        records = await _consume(consumer, count)
        await consumer.commit()
    finally:
        await consumer.stop()
    return records


async def _wait_for_full_isr(bootstrap: str, topic: str, replicas: int, timeout_s: float) -> None:
    """A restarted broker must catch up and rejoin every ISR, or the cluster stays degraded."""
    deadline = time.monotonic() + timeout_s
    while True:
        partitions = await describe_partitions(bootstrap, topic)
        if all(len(p["isr"]) == replicas for p in partitions):
            return
        assert time.monotonic() < deadline, f"ISR not restored: {partitions}"
        await asyncio.sleep(0.5)
