"""The aiokafka clients, built the same way by every process, and topic set-up.

Sizes are raised together (producer request size, topic `max.message.bytes`) so
that a 10 MB image fits end to end; fetches stay a few MB (`FETCH_BYTES`), which a
broker exceeds for one batch larger than that.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    InvalidTopicError,
    KafkaError,
    MessageSizeTooLargeError,
    TopicAuthorizationFailedError,
    UnknownTopicOrPartitionError,
)

from consumer import kafka_reader
from consumer.ordering import Chains
from consumer.outbox import OutboxClosed
from consumer.protocol import Headers
from consumer.settings import KafkaClientSettings
from engines.errors import NotAuthorized, ReplyUndeliverable, ServiceUnavailable

# Every process that talks to Kafka builds its clients here: their connections read
# responses without asyncio's StreamReader copies (consumer/kafka_reader.py).
kafka_reader.install()

ClientT = TypeVar("ClientT", AIOKafkaConsumer, AIOKafkaProducer)

log = logging.getLogger(__name__)

_TOPIC_ALREADY_EXISTS = 36

#: Failures that retrying cannot cure: the destination is missing or refuses the record.
_UNDELIVERABLE = (
    UnknownTopicOrPartitionError,
    TopicAuthorizationFailedError,
    InvalidTopicError,
    MessageSizeTooLargeError,
)


def default_client_id(role: str) -> str:
    return f"tfstream-{role}-{socket.gethostname()}-{os.getpid()}"


def producer(settings: KafkaClientSettings, role: str, linger_ms: int = 0) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        **settings.client_kwargs(),
        client_id=settings.client_id or default_client_id(role),
        acks="all",
        # The producer's own retries then never duplicate or reorder a record: a
        # reply or log record is written once per send, in the order of its key.
        enable_idempotence=True,
        linger_ms=linger_ms,
        max_request_size=settings.max_message_bytes,
        request_timeout_ms=settings.broker_timeout_ms,
        metadata_max_age_ms=5_000,
    )


#: How much one fetch asks for, per partition and in all. Soft limits: since fetch v3
#: (KIP-74) a broker returns the first record batch whole however large, so a 10 MB
#: image still comes (alone). Kept small on purpose: a fetch response is copied
#: (joined from the socket, sliced into records) while the GIL is held, and one of
#: tens of MB (512 camera frames in flight) misses every cache and, above glibc's
#: 32 MB mmap limit, faults in fresh pages for each copy: the consumer's CPU per frame
#: grew with the depth of its queue. A few MB per fetch keeps it flat.
FETCH_PARTITION_BYTES = 1024 * 1024
FETCH_BYTES = 4 * 1024 * 1024


def consumer(settings: KafkaClientSettings, role: str, **kwargs: object) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        **settings.client_kwargs(),
        client_id=settings.client_id or default_client_id(role),
        max_partition_fetch_bytes=FETCH_PARTITION_BYTES,
        fetch_max_bytes=FETCH_BYTES,
        **kwargs,  # type: ignore[arg-type]
    )


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int = 1
    compacted: bool = False
    configs: tuple[tuple[str, str], ...] = ()
    """More topic configs, set when the topic is created."""


def announcements_topic(name: str, forget_ms: int) -> TopicSpec:
    """`<prefix>.models`: compacted (the latest record per model and worker), and
    deleted by time as well, so a record nobody rewrites (a worker gone) leaves the
    topic about `forget_ms` after it was written: live workers rewrite theirs every
    third of their TTL. A segment is rolled after `forget_ms` so that time deletion
    can reach it (docs/protocol.md, "How long a gone worker is remembered")."""
    return TopicSpec(
        name,
        1,
        configs=(
            ("cleanup.policy", "compact,delete"),
            ("retention.ms", str(forget_ms)),
            ("segment.ms", str(forget_ms)),
        ),
    )


async def follow(
    consumer: AIOKafkaConsumer, reading: str, retry_s: float = 0.5
) -> AsyncIterator[list[ConsumerRecord[bytes, bytes]]]:
    """The records of every fetch, forever (an empty list when a fetch found none).

    A failed fetch is logged and asked again rather than raised: aiokafka
    reconnects by itself, and a reader that stopped would leave whoever waits
    on it (replies, announcements, the live page) hanging for good.
    """
    while True:
        try:
            batches = await consumer.getmany(timeout_ms=500)
        except KafkaError as exc:
            log.warning(f"reading {reading} failed", extra={"error": repr(exc)})
            await asyncio.sleep(retry_s)
            continue
        yield [record for records in batches.values() for record in records]


async def ensure_topics(
    settings: KafkaClientSettings, topics: Iterable[TopicSpec], replication_factor: int = 0
) -> None:
    """Create the topics that are missing; existing topics are left as they are.

    `replication_factor` 0 means min(3, number of brokers).

    Raises:
        NotAuthorized: the ACLs do not allow creating a missing topic.
        KafkaError: the broker refused for another reason than "already exists".
    """
    admin = AIOKafkaAdminClient(**settings.client_kwargs(), client_id=default_client_id("admin"))
    await admin.start()
    try:
        if replication_factor <= 0:
            cluster = await admin.describe_cluster()
            replication_factor = max(1, min(3, len(cluster.get("brokers", []))))
        existing = set(await admin.list_topics())
        wanted = [
            NewTopic(
                spec.name,
                spec.partitions,
                replication_factor,
                topic_configs={
                    "max.message.bytes": str(settings.max_message_bytes),
                    **({"cleanup.policy": "compact"} if spec.compacted else {}),
                    **dict(spec.configs),
                },
            )
            for spec in topics
            if spec.name not in existing
        ]
        if not wanted:
            return
        response = await admin.create_topics(wanted)
        for entry in response.topic_errors:
            topic, code = entry[0], entry[1]
            if code == TopicAuthorizationFailedError.errno:
                raise NotAuthorized(f"not authorized: Create on topic '{topic}'")
            if code not in (0, _TOPIC_ALREADY_EXISTS):
                from aiokafka.errors import for_code

                raise for_code(code)(
                    f"cannot create topic {topic}: {entry[2] if len(entry) > 2 else ''}"
                )
        log.info("topics created", extra={"topics": [t.name for t in wanted]})
    finally:
        await admin.close()


class KafkaOutbox:
    """The pipeline's outbox on a real producer.

    A destination that does not exist or refuses the record (unknown topic, no
    authorisation, record too large) raises `ReplyUndeliverable` at once, so
    the pipeline can answer elsewhere instead of blocking the partition. Any
    other failure (broker down, leader moving, timeouts) is retried with
    backoff until it succeeds: an accepted request's answer is never dropped
    because the broker was away.

    Records of one topic and key are written in the order they were sent here,
    each once per send. A record is handed to the producer only after the
    previous record of its key was acknowledged (or given up): the producer keeps
    a partition's order and, idempotent, never duplicates its own retries, but a
    record whose acknowledgement fails is sent again by this outbox, and had its
    successor been queued already, the resend would land after it. Records of
    different keys still go out together.
    """

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self._producer = producer
        self._closing = False
        self._acked: Chains[tuple[str, bytes], None] = Chains()
        """Per topic and key, when the last record sent was acknowledged (or given up)."""

    def send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None,
        headers: Headers,
        partition: int | None = None,
    ) -> asyncio.Future[None]:
        acked: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        before = None if key is None else self._acked.follow((topic, key), acked)
        record = (topic, value, key, list(headers))
        return asyncio.ensure_future(self._deliver(record, before, acked, partition))

    def close(self) -> None:
        """Stop retrying (used at the end of a shutdown that ran out of time)."""
        self._closing = True

    async def _deliver(
        self,
        record: tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]]],
        before: asyncio.Future[None] | None,
        acked: asyncio.Future[None],
        partition: int | None = None,
    ) -> None:
        """Send the record once `before` (the previous record of its key) is
        acknowledged, retrying until the broker acknowledges it too."""
        topic, value, key, headers = record
        delay_s, failures = 0.1, 0
        try:
            if before is not None:
                await asyncio.wait([before])
            while True:
                try:
                    ack = await self._producer.send(
                        topic, value=value, key=key, headers=headers, partition=partition
                    )
                    await ack
                    return
                except _UNDELIVERABLE as exc:
                    raise ReplyUndeliverable(f"cannot deliver to topic '{topic}': {exc!r}") from exc
                except KafkaError as exc:
                    failures += 1
                    if self._closing:
                        raise OutboxClosed(f"gave up sending to '{topic}': {exc!r}") from exc
                    log.warning(
                        "send failed, retrying",
                        extra={"topic": topic, "error": repr(exc), "attempt": failures},
                    )
                    await asyncio.sleep(delay_s)
                    delay_s = min(delay_s * 2, 5.0)
        finally:
            if not acked.done():  # written or given up: the next record of the key goes
                acked.set_result(None)


async def delete_topics(settings: KafkaClientSettings, names: list[str]) -> None:
    """Remove topics a process created for itself (a client's reply topic)."""
    admin = AIOKafkaAdminClient(**settings.client_kwargs(), client_id=default_client_id("admin"))
    await admin.start()
    try:
        await admin.delete_topics(names)
    finally:
        await admin.close()


async def seek_to_time(
    consumer: AIOKafkaConsumer,
    partitions: Sequence[TopicPartition],
    from_ms: int,
    timeout_s: float,
) -> None:
    """Each partition to its first record at or after `from_ms` (epoch ms), or to its
    end where there is none: where a shadow or a diff starts reading "from then on".

    Raises:
        ServiceUnavailable: the offsets were not known within `timeout_s`. aiokafka's
            offset look-ups wait for good on a partition that does not exist (a
            topic deleted after the assignment): bounded, so that a caller that
            retries logs each wait instead of hanging silently.
    """
    try:
        async with asyncio.timeout(timeout_s):
            found = await consumer.offsets_for_times({tp: from_ms for tp in partitions})
            ends = await consumer.end_offsets(list(partitions))
    except TimeoutError as exc:
        names = sorted({tp.topic for tp in partitions})
        raise ServiceUnavailable(
            f"the offsets of {', '.join(names)} were not known within {timeout_s:g}s "
            "(does the topic exist?)"
        ) from exc
    for tp in partitions:
        hit = found.get(tp)
        consumer.seek(tp, hit.offset if hit is not None else ends[tp])


async def started(client: ClientT) -> ClientT:
    """`client` started, or stopped again before the error propagates: a client whose
    start failed half-way still holds connections and background tasks, and a caller
    retrying at start-up would leak one such client per attempt."""
    try:
        await client.start()
    except BaseException:
        with contextlib.suppress(Exception):
            await client.stop()
        raise
    return client
