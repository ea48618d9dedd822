"""The Kafka outbox's order: records of one key are written in the order sent, once
per send, a failed acknowledgement resent before the records after it.

The producer here is a stand-in for `AIOKafkaProducer.send` that can hold a
record back the way the real one does while it fetches a new topic's metadata;
the end-to-end order on a real broker is tested in test_protocol_kafka.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.errors import KafkaTimeoutError

from consumer.kafka_io import KafkaOutbox


class HeldProducer:
    """Queues records in the order its `send` returns; `hold` makes the next send to
    a topic wait for `release` (a metadata fetch), `failures` makes the next ones raise,
    `lost_acks` makes the next acknowledgements fail after the record was queued (a
    request that timed out on its way to the broker)."""

    def __init__(self) -> None:
        self.queued: list[bytes | None] = []
        self.held: dict[str, asyncio.Event] = {}
        self.failures = 0
        self.lost_acks = 0
        self.acks: list[asyncio.Future[None]] = []

    def hold(self, topic: str) -> asyncio.Event:
        self.held[topic] = asyncio.Event()
        return self.held[topic]

    async def send(self, topic: str, value: bytes | None, **_: Any) -> asyncio.Future[None]:
        gate = self.held.pop(topic, None)
        if gate is not None:
            await gate.wait()
        if self.failures:
            self.failures -= 1
            raise KafkaTimeoutError()
        self.queued.append(value)
        ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.lost_acks:
            self.lost_acks -= 1
            loop = asyncio.get_running_loop()
            loop.call_later(0.02, ack.set_exception, KafkaTimeoutError())
        else:
            ack.set_result(None)
        self.acks.append(ack)
        return ack


@pytest.mark.asyncio
async def test_a_record_held_back_keeps_the_later_records_of_its_key_behind_it() -> None:
    producer = HeldProducer()
    outbox = KafkaOutbox(producer)  # type: ignore[arg-type]
    gate = producer.hold("replies")
    first = outbox.send("replies", b"d0", b"cam", [])
    await asyncio.sleep(0.01)  # d0 now waits for the topic's metadata
    later = [outbox.send("replies", f"d{i}".encode(), b"cam", []) for i in (1, 2)]
    other = outbox.send("replies", b"x0", b"other-cam", [])
    await asyncio.wait_for(other, 5)  # another key does not wait
    await asyncio.sleep(0.01)
    assert producer.queued == [b"x0"]
    gate.set()
    await asyncio.gather(first, *later)
    assert producer.queued == [b"x0", b"d0", b"d1", b"d2"]


@pytest.mark.asyncio
async def test_a_record_retried_before_it_was_queued_still_goes_first() -> None:
    producer = HeldProducer()
    producer.failures = 1
    outbox = KafkaOutbox(producer)  # type: ignore[arg-type]
    sent = [outbox.send("replies", f"d{i}".encode(), b"cam", []) for i in range(3)]
    await asyncio.gather(*sent)
    assert producer.queued == [b"d0", b"d1", b"d2"]


@pytest.mark.asyncio
async def test_records_without_a_key_are_not_held_back() -> None:
    producer = HeldProducer()
    outbox = KafkaOutbox(producer)  # type: ignore[arg-type]
    gate = producer.hold("replies")
    first = outbox.send("replies", b"a", None, [])
    await asyncio.sleep(0.01)
    await asyncio.wait_for(outbox.send("replies", b"b", None, []), 5)
    assert producer.queued == [b"b"]
    gate.set()
    await first
    assert producer.queued == [b"b", b"a"]


@pytest.mark.asyncio
async def test_an_ack_that_fails_after_queueing_is_resent_before_the_next_record() -> None:
    """The first record is queued, then its acknowledgement fails: it is sent again,
    and only then the records after it, each written once."""
    producer = HeldProducer()
    producer.lost_acks = 1
    outbox = KafkaOutbox(producer)  # type: ignore[arg-type]
    sent = [outbox.send("replies", f"d{i}".encode(), b"cam", []) for i in range(3)]
    await asyncio.wait_for(asyncio.gather(*sent), 5)
    assert producer.queued == [b"d0", b"d0", b"d1", b"d2"]


@pytest.mark.asyncio
async def test_the_producer_is_idempotent() -> None:
    """aiokafka keeps a transaction manager (producer id and sequence numbers) only
    for an idempotent producer."""
    from consumer.kafka_io import producer
    from consumer.settings import KafkaClientSettings

    client = producer(KafkaClientSettings(bootstrap="localhost:1"), "worker")
    try:
        assert client._txn_manager is not None
    finally:
        await client.stop()
