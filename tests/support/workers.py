"""Consumer processes and a raw Kafka client for the integration tests.

The raw client deliberately uses plain aiokafka and header names written out
here, not the project's client library: the tests check the wire protocol as
an outside client sees it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

MAX_BYTES = 16 * 1024 * 1024


def unique_prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


async def create_topic(
    bootstrap: str, name: str, partitions: int = 1, replication: int = 1
) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        if name not in await admin.list_topics():
            await admin.create_topics(
                [
                    NewTopic(
                        name,
                        partitions,
                        replication,
                        topic_configs={"max.message.bytes": str(MAX_BYTES)},
                    )
                ]
            )
    finally:
        await admin.close()


@contextlib.asynccontextmanager
async def raw_producer(bootstrap: str) -> AsyncIterator[AIOKafkaProducer]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=MAX_BYTES, acks="all")
    await producer.start()
    try:
        yield producer
    finally:
        await producer.stop()


def headers(**values: object) -> list[tuple[str, bytes]]:
    """Request headers by hand: correlation_id -> 'correlation-id', values as UTF-8 text."""
    return [(k.replace("_", "-"), str(v).encode()) for k, v in values.items() if v is not None]


def _reader(bootstrap: str, *topics: str) -> AIOKafkaConsumer:
    """A group-less consumer from the beginning, with room for the largest records."""
    return AIOKafkaConsumer(
        *topics,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        group_id=None,
        max_partition_fetch_bytes=MAX_BYTES,
        fetch_max_bytes=4 * MAX_BYTES,
    )


async def describe_partitions(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    """The topic's partitions as the broker describes them, by partition number."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    assert described["error_code"] == 0, described
    return sorted(described["partitions"], key=lambda p: p["partition"])


async def read_topic(
    bootstrap: str,
    topic: str,
    expect: int,
    timeout_s: float = 120,
    until: Callable[[list[Any]], bool] | None = None,
) -> list[Any]:
    """Read `topic` from the beginning until `expect` records arrived (or `until(records)`
    holds, when given) or the time is up."""
    done = until or (lambda records: len(records) >= expect)
    consumer = _reader(bootstrap, topic)
    await consumer.start()
    records: list[Any] = []
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not done(records):
            batch = await consumer.getmany(timeout_ms=200)
            for recs in batch.values():
                records.extend(recs)
    finally:
        await consumer.stop()
    return records


async def read_to_end(bootstrap: str, topic: str, timeout_s: float = 60) -> list[Any]:
    """Every record of `topic` up to its end offsets as they are now: for counting
    what is there (duplicates), where waiting for an expected number would stop early."""
    partitions = await describe_partitions(bootstrap, topic)
    assigned = [TopicPartition(topic, p["partition"]) for p in partitions]
    consumer = _reader(bootstrap)
    await consumer.start()
    records: list[Any] = []
    try:
        consumer.assign(assigned)
        await consumer.seek_to_beginning(*assigned)
        ends = await consumer.end_offsets(assigned)
        deadline = time.monotonic() + timeout_s
        while [tp for tp in assigned if await consumer.position(tp) < ends[tp]]:
            assert time.monotonic() < deadline, f"{topic} not read to its end in {timeout_s}s"
            for recs in (await consumer.getmany(timeout_ms=200)).values():
                records.extend(recs)
    finally:
        await consumer.stop()
    return records


def replies_by_id(records: Iterable[Any]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for rec in records:
        body = json.loads(rec.value)
        out.setdefault(str(body["correlation_id"]), []).append(body)
    return out


def header_dict(record: Any) -> dict[str, str]:
    return {k: v.decode() for k, v in record.headers}


async def wait_for(predicate: Any, timeout_s: float = 60, interval_s: float = 0.2) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(interval_s)
    raise AssertionError("condition not met in time")
