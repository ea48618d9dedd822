"""Records in, records out: the pipeline behind a record transport (Kafka).

`RecordAdapter.submit` maps a request record to a `Request` (or, when its
headers are malformed, straight to an error answer), waits for the pipeline's
`Answer`, and maps that back to records through an `Outbox`: the reply on its
reply topic, and the original record on the dead-letter topic when the answer
says so. The future it returns resolves once the outbox acknowledged all of
them: only then may the worker commit the record's offset.

Nothing here touches a Kafka client, so these rules run in unit tests over an
in-memory outbox.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Protocol

from opentelemetry.trace import SpanKind

from consumer.answer_log import AnswerSink
from consumer.metrics import WorkerMetrics
from consumer.pipeline import Answer, Pipeline
from consumer.protocol import (
    Headers,
    Reply,
    Topics,
    dlq_headers,
    parse_request,
    reply_address,
    trace_context,
)
from consumer.spans import RequestSpans
from engines.errors import ReplyUndeliverable, TfstreamError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Record:
    """A request record, detached from any Kafka client type."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers = ()
    timestamp_ms: int | None = None
    """The record's timestamp; the answer log measures latency from it."""


class Outbox(Protocol):
    def send(
        self, topic: str, value: bytes | None, key: bytes | None, headers: Headers
    ) -> Awaitable[None]:
        """Queue a record; awaiting the result waits until it is acknowledged.

        Transient failures are retried inside. The awaitable raises
        `ReplyUndeliverable` when the destination cannot take the record (missing
        topic, refused, too large), and other errors only when the outbox is
        closing; then the request is not committed.
        """
        ...


class RecordAdapter:
    def __init__(
        self,
        pipeline: Pipeline,
        topics: Topics,
        outbox: Outbox,
        worker_id: str,
        metrics: WorkerMetrics | None = None,
        answer_log: AnswerSink | None = None,
    ) -> None:
        """`answer_log`: where a copy of every answer goes too (`--answer-log`)."""
        self.pipeline = pipeline
        self.topics = topics
        self.outbox = outbox
        self.worker_id = worker_id
        self.metrics = metrics or pipeline.metrics
        self.answer_log = answer_log
        self._handling: set[asyncio.Task[None]] = set()

    @property
    def inflight(self) -> int:
        """Records submitted whose answer is not yet acknowledged (or given up)."""
        return len(self._handling)

    def submit(self, record: Record) -> asyncio.Future[None]:
        """Resolves once the record's answer is acknowledged; fails when it could
        not be delivered (then the record must stay uncommitted)."""
        model = self.topics.model_of(record.topic)
        spans = RequestSpans(
            f"{record.topic} process",
            trace_context(record.headers),
            SpanKind.CONSUMER,
            {
                "messaging.system": "kafka",
                "messaging.operation.type": "process",
                "messaging.destination.name": record.topic,
                "messaging.destination.partition.id": str(record.partition),
                "messaging.kafka.offset": record.offset,
            },
        )
        try:
            request = parse_request(model, record.key, record.value, record.headers)
        except TfstreamError as exc:
            reply_to, correlation_id = reply_address(self.topics, model, record.headers)
            answered = asyncio.get_running_loop().create_future()
            answered.set_result(self.pipeline.failed(model, correlation_id, exc))
        else:
            reply_to = request.reply_to or self.topics.results(model)
            answered = self.pipeline.submit(request, spans)
        task = asyncio.get_running_loop().create_task(
            self._deliver(record, model, reply_to or self.topics.results(model), answered, spans)
        )
        self._handling.add(task)
        task.add_done_callback(self._handling.discard)
        return task

    async def drain(self) -> None:
        """Wait until every submitted record is delivered or given up."""
        while self._handling:
            await asyncio.gather(*list(self._handling), return_exceptions=True)

    async def _deliver(
        self,
        record: Record,
        model: str,
        reply_to: str,
        answered: Awaitable[Answer],
        spans: RequestSpans,
    ) -> None:
        answer = await answered
        try:
            await asyncio.gather(*self._sends(record, model, reply_to, answer, spans))
        finally:
            spans.end(answer.error)

    def _sends(
        self, record: Record, model: str, reply_to: str, answer: Answer, spans: RequestSpans
    ) -> list[Awaitable[None]]:
        """Where an answer goes: the reply, a DLQ copy of a bad request, the answer log."""
        sends = [self._send_reply(record, model, reply_to, answer.reply, spans)]
        if answer.dead_letter and answer.error is not None:
            sends.append(self._dead_letter(record, model, answer.error))
        if self.answer_log is not None:
            sends.append(self.answer_log.write(record, model, answer.reply, reply_to))
        return sends

    async def _send_reply(
        self, record: Record, model: str, topic: str, reply: Reply, spans: RequestSpans
    ) -> None:
        """The reply to `topic`; if that topic cannot take it (a client's reply topic
        deleted while its request waited), to the model's results topic; if that
        fails too, the request goes to the DLQ with the reason, so it is never
        lost and never blocks its partition."""
        problem: ReplyUndeliverable | None = None
        for destination in dict.fromkeys([topic, self.topics.results(model)]):
            span, headers = spans.reply(destination, reply.headers())
            try:
                await self.outbox.send(destination, reply.to_json(), record.key, headers)
            except ReplyUndeliverable as exc:
                problem = exc
                log.warning(
                    "reply undeliverable", extra={"topic": destination, "error": exc.message}
                )
                continue
            finally:
                span.end()
            return
        assert problem is not None
        await self._dead_letter(record, model, problem)

    def _dead_letter(self, record: Record, model: str, error: TfstreamError) -> Awaitable[None]:
        self.metrics.dlq.labels(model, error.code).inc()
        log.info(
            "dead letter",
            extra={
                "code": error.code,
                "topic": record.topic,
                "partition": record.partition,
                "offset": record.offset,
            },
        )
        headers = dlq_headers(
            record.headers, error, record.topic, record.partition, record.offset, self.worker_id
        )
        return self.outbox.send(self.topics.dlq, record.value, record.key, headers)
