"""Where answers are written: the one `Outbox` protocol every sender speaks.

The pipeline's answers leave as records (reply, results, dead letter, answer log)
through an outbox; `consumer.kafka_io.KafkaOutbox` is the producer's, tests use an
in-memory one. Keeping the contract here, apart from both, lets `records` and
`answer_log` depend on it without depending on each other or on aiokafka.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Protocol

from consumer.protocol import Headers


class OutboxClosed(Exception):
    """The outbox stopped retrying (a shutdown ran out of time): the record may or may
    not be written, so its request must stay uncommitted and be read again. Kept apart
    from `ReplyUndeliverable`, which a dead letter can cure."""


class Outbox(Protocol):
    def send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None,
        headers: Headers,
        partition: int | None = None,
    ) -> Awaitable[None]:
        """Queue a record; awaiting the result waits until it is acknowledged.
        `partition`: where it must go (a camera's state beside its requests); None:
        the producer's partitioner.

        Transient failures are retried inside. The awaitable raises
        `ReplyUndeliverable` when the destination cannot take the record (missing
        topic, refused, too large) and `OutboxClosed` once the outbox is closing.
        """
        ...
