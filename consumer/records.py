"""Records in, records out: the pipeline behind a record transport (Kafka).

`RecordAdapter.submit` maps a request record to a `Request` (or, when its
headers are malformed, straight to an error answer), waits for the pipeline's
`Answer`, and maps that back to records through an `Outbox`: the reply on its
reply topic, and the original record on the dead-letter topic when the answer
says so. The future it returns resolves once the outbox acknowledged all of
them: only then may the worker commit the record's offset.

An answer that cannot be written is never left pending for good (its partition
could not commit past it): each send is tried `DELIVERY_ATTEMPTS` times, then
the request goes to the DLQ with the error; if the DLQ refuses too, the future
raises `AnswerDropped`, and the worker commits past it and turns not-ready.
Only a closing outbox (`OutboxClosed`) leaves a request uncommitted, to be read
again after the restart.

Nothing here touches a Kafka client, so these rules run in unit tests over an
in-memory outbox.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from opentelemetry.trace import SpanKind

from consumer.answer_log import AnswerSink
from consumer.metrics import WorkerMetrics
from consumer.outbox import Outbox, OutboxClosed
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
from consumer.tracking_stage import TrackedAnswer, TrackingStage
from engines.errors import ReplyUndeliverable, TfstreamError

log = logging.getLogger(__name__)

#: How many times a reply or dead-letter copy is tried before the request goes to the
#: DLQ (a reply) or is given up (a dead letter the DLQ refuses).
DELIVERY_ATTEMPTS = 3
#: First pause between two attempts; doubled after each.
RETRY_DELAY_S = 0.2


class AnswerDropped(Exception):
    """A request whose answer could not be written and whose dead letter the DLQ
    refused: nothing more can be done for it here, and holding it back would freeze
    its partition. The worker commits past it and says why it is not ready."""

    def __init__(self, model: str, reason: str) -> None:
        super().__init__(reason)
        self.model = model
        self.reason = reason


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
        self.tracking: TrackingStage | None = None
        """Set by a worker that tracks cameras (`consumer.tracking_stage`)."""

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
        if self.tracking is not None:  # the frame's place in its camera's order
            answered = self.tracking.tracked(record, model, answered)
        task = asyncio.get_running_loop().create_task(
            self._deliver(record, model, reply_to or self.topics.results(model), answered, spans)
        )
        self._handling.add(task)
        task.add_done_callback(self._handling.discard)
        return task

    def abandon(self) -> None:
        """Stop delivering (a shutdown out of time): the records in hand stay
        uncommitted and are read again after the restart."""
        for task in list(self._handling):
            task.cancel()

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
        outcomes: list[object] = []
        try:
            sends = self._sends(record, model, reply_to, answer, spans)
            if isinstance(answer, TrackedAnswer) and answer.writes is not None:
                writes = answer.writes  # events acknowledged, then the camera's state
                sends.append(self._bounded(record, model, writes))
            if len(sends) == 1:  # the reply alone, as nearly always: no gather, no task
                try:
                    await sends[0]
                except Exception as exc:
                    outcomes.append(exc)
            else:
                outcomes = await asyncio.gather(*sends, return_exceptions=True)
        finally:
            spans.end(answer.error)
            if isinstance(answer, TrackedAnswer):
                answer.settled()  # written or given up: the camera's next state may go
        # Every send has ended (none is left running behind a commit); the gravest
        # outcome wins: a closing outbox keeps the request uncommitted.
        failures = [o for o in outcomes if isinstance(o, BaseException)]
        for kind in (asyncio.CancelledError, OutboxClosed, AnswerDropped, BaseException):
            for failure in failures:
                if isinstance(failure, kind):
                    raise failure

    def _sends(
        self, record: Record, model: str, reply_to: str, answer: Answer, spans: RequestSpans
    ) -> list[Awaitable[None]]:
        """Where an answer goes: the reply, a DLQ copy of a bad request, the answer log."""
        sends = [
            self._bounded(
                record,
                model,
                lambda: self._send_reply(record, model, reply_to, answer.reply, spans),
            )
        ]
        if answer.dead_letter and answer.error is not None:
            error = answer.error
            sends.append(
                self._bounded(record, model, lambda: self._dead_letter(record, model, error), True)
            )
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

    async def _bounded(
        self,
        record: Record,
        model: str,
        send: Callable[[], Awaitable[None]],
        dead_letter: bool = False,
    ) -> None:
        """`send()` up to `DELIVERY_ATTEMPTS` times; then the request to the DLQ with
        the last error (unless `send` was the dead letter already).

        Raises:
            AnswerDropped: the DLQ refused the request too.
            OutboxClosed: the outbox stopped retrying (the request stays uncommitted).
        """
        delay_s = RETRY_DELAY_S
        for attempt in range(1, DELIVERY_ATTEMPTS + 1):
            try:
                await send()
                return
            except OutboxClosed:
                raise
            except Exception as exc:
                problem = exc
                log.warning(
                    "delivery failed",
                    extra={
                        "topic": record.topic,
                        "partition": record.partition,
                        "offset": record.offset,
                        "attempt": attempt,
                        "error": repr(exc),
                    },
                )
                if attempt < DELIVERY_ATTEMPTS:
                    await asyncio.sleep(delay_s)
                    delay_s *= 2
        reason = problem.message if isinstance(problem, TfstreamError) else repr(problem)
        if not dead_letter:
            error = ReplyUndeliverable(
                f"answer not written after {DELIVERY_ATTEMPTS} attempts: {reason}"[:1000]
            )
            try:
                await self._dead_letter(record, model, error)
                return
            except OutboxClosed:
                raise
            except Exception as exc:
                reason = exc.message if isinstance(exc, TfstreamError) else repr(exc)
        raise AnswerDropped(model, f"the DLQ refused the request: {reason}"[:1000])

    async def _dead_letter(self, record: Record, model: str, error: TfstreamError) -> None:
        headers = dlq_headers(
            record.headers, error, record.topic, record.partition, record.offset, self.worker_id
        )
        await self.outbox.send(self.topics.dlq, record.value, record.key, headers)
        self.metrics.dlq.labels(model, error.code).inc()  # counted once written
        log.info(
            "dead letter",
            extra={
                "code": error.code,
                "topic": record.topic,
                "partition": record.partition,
                "offset": record.offset,
            },
        )
