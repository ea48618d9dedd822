"""The answer log and shadow answers: every answer a worker gave, as a record anyone
can read later.

A reply goes to whoever asked: a client's reply topic, gone with the client, or
the results topic, where camera readers take it. Neither says afterwards what the
service answered to whom. With `--answer-log` a serving worker also writes each
answer, success or error, to `<prefix>.answers.<model>`; a shadow worker
(`consumer.shadow`) writes its answers there only, on `<prefix>.shadow.<name>.<model>`.
Both record kinds have the same body (`LoggedAnswer`), so `tfstream-diff`
compares any two of them by correlation id.

A logged answer keeps where its request was (topic, partition, offset, time), so
a reader can fetch the very frame it answered, and the latency from the request's
record time to the answer. The record key is the request's key: a camera's
answers stay in order on one partition.

The log is an audit trail, so it is complete: a request is committed only once
its log record is acknowledged. A record that cannot be written (its topic
missing and not creatable, refused, too large) is retried with backoff for as
long as it takes, holding its request uncommitted; every failed attempt counts in
`tfstream_answers_not_logged`, and until a record of that topic is written again
the worker is not ready and says why.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from consumer.health import Problems
from consumer.metrics import WorkerMetrics
from consumer.ordering import Chains
from consumer.outbox import Outbox, OutboxClosed
from consumer.protocol import (
    ANSWER_ROLE,
    CONTENT_TYPE,
    CORRELATION_ID,
    ERROR_CODE,
    MODEL_VERSION,
    PROTOCOL_VERSION,
    SHADOW_NAME,
    Reply,
    Topics,
)
from engines.errors import InvalidRequest, TfstreamError

log = logging.getLogger(__name__)


class Role(StrEnum):
    SERVING = "serving"
    """Answered the client: the record is a copy of what the client got."""
    SHADOW = "shadow"
    """Answered nobody: a candidate model's answer, kept for comparison."""


@dataclass(frozen=True)
class RequestPosition:
    """Where the answered request was: enough to read its frame again."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None = None
    """The request record's timestamp (the producer's send time by default)."""

    @property
    def ident(self) -> str:
        return f"{self.topic}:{self.partition}:{self.offset}"


@dataclass(frozen=True)
class LoggedAnswer:
    """The body of an answer-log or shadow record."""

    role: Role
    model: str
    reply: Reply
    request: RequestPosition
    answered_ms: int
    shadow: str | None = None
    key: str | None = None
    """The request's key as text (undecodable bytes replaced)."""
    reply_to: str | None = None
    """Where the serving answer was sent; None for a shadow, which sends none."""
    latency_ms: float | None = None
    """From the request record's timestamp to the answer: what a client would have waited,
    less the reply's trip back."""

    @property
    def correlation_id(self) -> str | None:
        return self.reply.correlation_id

    @property
    def model_version(self) -> int | None:
        """The version of the model that answered, when the reply names one (written
        at the record's top too, for readers that skip the reply)."""
        return self.reply.model_version

    @property
    def ident(self) -> str:
        """What pairs two answers to the same request: the correlation id, or for a
        request without one (answered with an error), where it was."""
        return self.correlation_id or self.request.ident

    def to_json(self) -> bytes:
        """The reply's own JSON goes in as it is, not decoded and encoded again (that
        was two thirds of the time here: a reply's boxes are most of the record)."""
        head = json.dumps(
            {
                "protocol": PROTOCOL_VERSION,
                "role": self.role.value,
                "shadow": self.shadow,
                "model": self.model,
                "model_version": self.model_version,
                "correlation_id": self.reply.correlation_id,
                "key": self.key,
                "reply_to": self.reply_to,
                "request": {
                    "topic": self.request.topic,
                    "partition": self.request.partition,
                    "offset": self.request.offset,
                    "timestamp_ms": self.request.timestamp_ms,
                },
                "answered_ms": self.answered_ms,
                "latency_ms": self.latency_ms,
            },
            separators=(",", ":"),
        ).encode()
        return head[:-1] + b',"reply":' + self.reply.to_json() + b"}"

    def headers(self) -> list[tuple[str, bytes]]:
        out = [(CONTENT_TYPE, b"application/json"), (ANSWER_ROLE, self.role.value.encode())]
        if self.reply.correlation_id is not None:
            out.insert(0, (CORRELATION_ID, self.reply.correlation_id.encode()))
        if self.reply.error is not None:
            out.append((ERROR_CODE, self.reply.error.code.encode()))
        if self.shadow is not None:
            out.append((SHADOW_NAME, self.shadow.encode()))
        if self.model_version is not None:
            out.append((MODEL_VERSION, str(self.model_version).encode()))
        return out

    @staticmethod
    def from_json(value: bytes) -> LoggedAnswer:
        """Raises: InvalidRequest for anything but an answer-log or shadow record."""
        try:
            body = json.loads(value)
            request = body["request"]
            latency = body.get("latency_ms")
            return LoggedAnswer(
                role=Role(body["role"]),
                model=str(body["model"]),
                reply=Reply.from_json(json.dumps(body["reply"]).encode()),
                request=RequestPosition(
                    str(request["topic"]),
                    int(request["partition"]),
                    int(request["offset"]),
                    request.get("timestamp_ms"),
                ),
                answered_ms=int(body["answered_ms"]),
                shadow=body.get("shadow"),
                key=body.get("key"),
                reply_to=body.get("reply_to"),
                latency_ms=None if latency is None else float(latency),
            )
        except (ValueError, KeyError, TypeError, AttributeError, InvalidRequest) as exc:
            raise InvalidRequest(f"not a tfstream answer-log record: {exc!r}") from None


#: First pause before a failed log record is tried again; doubled up to `RETRY_MAX_S`.
RETRY_FIRST_S = 0.2
RETRY_MAX_S = 5.0


def log_topic(topics: Topics, model: str, shadow: str | None = None) -> str:
    """The one place that names log topics: a shadow's answers of `model`, or the
    serving workers' answer log."""
    return topics.shadow(shadow, model) if shadow else topics.answers(model)


class RequestRecord(Protocol):
    """What the log needs of the answered record (`consumer.records.Record`)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    timestamp_ms: int | None


class AnswerSink:
    """Writes the answers of one role to their topics through the worker's outbox.

    A topic this worker did not create at start (a request topic for a model it does
    not serve, answered with an error) is created before its first record by
    `ensure`, once per worker: every record that needs it waits for that creation,
    and a creation that failed is tried again by the next attempt, never taken as
    made. A record that cannot be written is retried until it is (see the module).
    """

    def __init__(
        self,
        topics: Topics,
        outbox: Outbox,
        metrics: WorkerMetrics,
        role: Role = Role.SERVING,
        shadow: str | None = None,
        ensure: Callable[[str], Awaitable[None]] | None = None,
        problems: Problems | None = None,
    ) -> None:
        self.topics = topics
        self.outbox = outbox
        self.metrics = metrics
        self.role = role
        self.shadow = shadow
        self._ensure = ensure
        self.problems = problems if problems is not None else Problems()
        self._order: Chains[tuple[str, bytes], None] = Chains()
        """Per topic and key, the last record being written: the next waits for it."""
        self._ensured: dict[str, asyncio.Future[None]] = {}
        """Per topic, its creation: made once, awaited by every record that needs it, in
        the order they came (so records of one key stay in order behind it)."""

    def topic(self, model: str) -> str:
        return log_topic(self.topics, model, self.shadow if self.role is Role.SHADOW else None)

    def created(self, *topics: str) -> None:
        """Topics that already exist (made at start): no need to ensure them again."""
        for topic in topics:
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            done.set_result(None)
            self._ensured[topic] = done

    def entry(
        self, record: RequestRecord, model: str, reply: Reply, reply_to: str | None
    ) -> LoggedAnswer:
        now_ms = int(time.time() * 1000)
        return LoggedAnswer(
            role=self.role,
            model=model,
            reply=reply,
            request=RequestPosition(
                record.topic, record.partition, record.offset, record.timestamp_ms
            ),
            answered_ms=now_ms,
            shadow=self.shadow,
            key=None if record.key is None else record.key.decode("utf-8", "replace"),
            reply_to=reply_to if self.role is Role.SERVING else None,
            latency_ms=None if record.timestamp_ms is None else float(now_ms - record.timestamp_ms),
        )

    async def _create(self, topic: str, ensure: Callable[[str], Awaitable[None]]) -> None:
        try:
            await ensure(topic)
        except BaseException:
            del self._ensured[topic]  # the next record tries again
            raise

    async def write(
        self, record: RequestRecord, model: str, reply: Reply, reply_to: str | None
    ) -> None:
        """Returns once the log record is acknowledged, however long that takes.

        Raises:
            OutboxClosed: the outbox stopped retrying (the request stays uncommitted).
        """
        logged = self.entry(record, model, reply, reply_to)
        topic = self.topic(model)
        written: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        before = None if record.key is None else self._order.follow((topic, record.key), written)
        try:
            if before is not None:  # a camera's log stays in order, retries and all
                await asyncio.wait([before])
            await self._write(topic, logged, record.key, model)
        finally:
            if not written.done():
                written.set_result(None)

    async def _write(self, topic: str, logged: LoggedAnswer, key: bytes | None, model: str) -> None:
        reply = logged.reply
        delay_s = RETRY_FIRST_S
        while True:
            try:
                await self._created(topic)
                await self.outbox.send(topic, logged.to_json(), key, logged.headers())
            except OutboxClosed:
                raise
            except Exception as exc:
                reason = exc.message if isinstance(exc, TfstreamError) else repr(exc)
                self.metrics.answers_not_logged.labels(model).inc()
                self.problems.set(f"answer log {topic}", reason)
                log.error(
                    "answer not logged yet; its request stays uncommitted",
                    extra={
                        "topic": topic,
                        "error": reason,
                        "correlation_id": reply.correlation_id,
                        "retry_in_s": delay_s,
                    },
                )
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, RETRY_MAX_S)
                continue
            self.problems.clear(f"answer log {topic}")
            return

    async def _created(self, topic: str) -> None:
        """Wait for `topic`'s creation, starting it if no record started it yet."""
        if self._ensure is None:
            return
        if topic not in self._ensured:
            self._ensured[topic] = asyncio.ensure_future(self._create(topic, self._ensure))
        await self._ensured[topic]
