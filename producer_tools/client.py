"""Async request/reply over Kafka: send an image, await its detections.

    async with DetectClient(KafkaClientSettings(bootstrap="localhost:9092")) as client:
        reply = await client.detect("shapes_tf2", open("cat.jpg", "rb").read())
        print(reply.data["bounding-boxes"] if reply.success else reply.error)

Each client owns a reply topic (`<prefix>.replies.<unique id>`), so any number
of clients (bridges behind a load balancer, replay runs) can share the workers.
One background reader resolves waiting calls by correlation id; an answer for a
call that already timed out, or a second answer for the same id (at-least-once
delivery after a worker crash), is dropped and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError, MessageSizeTooLargeError
from opentelemetry.trace import SpanKind

from consumer import kafka_io
from consumer.access import as_not_authorized, explain
from consumer.protocol import Control, ControlCommand, Reply, Request, Topics, with_trace
from consumer.settings import KafkaClientSettings
from consumer.startup import until_ready
from engines.errors import ImageTooLarge, InvalidRequest, RequestTimeout, ServiceUnavailable
from engines.tracing import tracer

log = logging.getLogger(__name__)


@dataclass
class ClientStats:
    sent: int = 0
    answered: int = 0
    timed_out: int = 0
    duplicates: int = 0
    """Answers for ids already answered or given up on: dropped."""


class DetectClient:
    def __init__(
        self,
        settings: KafkaClientSettings,
        timeout_s: float = 30.0,
        reply_topic: str | None = None,
        send_deadline: bool = True,
        delete_reply_topic: bool = True,
        send_timeout_s: float = 10.0,
    ) -> None:
        """`timeout_s`: default time to wait for an answer. With `send_deadline`,
        each request carries `deadline-ms` = now + its timeout, so workers do not
        spend time on requests nobody waits for any more. `send_timeout_s`: how long
        handing a request to the broker may take before the call fails with
        ServiceUnavailable (the broker is away)."""
        self.send_timeout_s = send_timeout_s
        self.settings = settings
        self.topics = Topics(settings.topic_prefix)
        self.timeout_s = timeout_s
        self.send_deadline = send_deadline
        self.reply_topic = reply_topic or f"{self.topics.prefix}.replies.{uuid.uuid4().hex[:16]}"
        self._delete_reply_topic = delete_reply_topic and reply_topic is None
        self._pending: dict[str, asyncio.Future[Reply]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._started: list[AIOKafkaProducer | AIOKafkaConsumer] = []
        """The clients `start` got running, for `stop`, which may follow a failed start."""
        self._made_reply_topic = False
        self._reader_died: BaseException | None = None
        """What ended the reply reader: every call then fails at once instead of waiting
        out its timeout for an answer nobody will read."""
        self.stats = ClientStats()

    async def __aenter__(self) -> DetectClient:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self, deadline_s: float | None = None) -> None:
        """Create the reply topic and start reading it before any request is sent,
        retrying while the brokers are not there yet (up to `start_timeout_s`, or
        the `time.monotonic()` instant `deadline_s` a caller's steps share).

        Raises:
            NotAuthorized: Kafka refused the credentials, or Create/Read on the reply topic.
            ServiceUnavailable: the broker cannot be reached (within `start_timeout_s`),
                or its certificate is not trusted.
        """
        await until_ready("connecting", self._start_once, self.settings, deadline_s)
        self._reader = asyncio.create_task(self._read_replies(), name="replies")
        self._reader.add_done_callback(self._reader_ended)

    async def _start_once(self) -> None:
        try:
            await kafka_io.ensure_topics(self.settings, [kafka_io.TopicSpec(self.reply_topic, 1)])
            self._made_reply_topic = True
            self.producer = kafka_io.producer(self.settings, "client")
            await self.producer.start()
            self._started.append(self.producer)
            self.consumer = kafka_io.consumer(
                self.settings, "client", group_id=None, auto_offset_reset="earliest"
            )
            self.consumer.assign([TopicPartition(self.reply_topic, 0)])
            await self.consumer.start()
            self._started.append(self.consumer)
        except (KafkaError, OSError) as exc:
            while self._started:  # a clean slate for the next attempt
                with contextlib.suppress(KafkaError, OSError):
                    await self._started.pop().stop()
            raise await explain(exc, self.settings) from exc

    @property
    def reader(self) -> asyncio.Task[None] | None:
        """The background task resolving answers (for a supervisor to watch: an
        exception that ends it is its to log and count)."""
        return self._reader

    def _reader_ended(self, reader: asyncio.Task[None]) -> None:
        """The reader stopped: nothing will resolve a waiting call any more, so each
        fails now with ServiceUnavailable (retryable) instead of at its timeout, and
        so does every later call."""
        if reader.cancelled():
            return
        self._reader_died = reader.exception() or RuntimeError("the reply reader returned")
        error = self._reader_gone()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)

    def _reader_gone(self) -> ServiceUnavailable:
        # The type only: an exception's text can hold hosts or data (the log has it all).
        died = type(self._reader_died).__name__
        return ServiceUnavailable(f"the reply reader stopped ({died}); restart this client")

    async def stop(self) -> None:
        """Stop what `start` got running; also after a start that failed or was cancelled
        half-way."""
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):  # reported already
                await self._reader
        for future in self._pending.values():
            future.cancel()
        while self._started:
            with contextlib.suppress(KafkaError, OSError):  # the broker may be gone
                await self._started.pop().stop()
        if self._delete_reply_topic and self._made_reply_topic:
            with contextlib.suppress(KafkaError, OSError):
                await kafka_io.delete_topics(self.settings, [self.reply_topic])
            self._made_reply_topic = False

    async def detect(
        self,
        model: str,
        image: bytes,
        *,
        confidence: float | None = None,
        predictions: int | None = None,
        image_name: str | None = None,
        key: bytes | None = None,
        timeout_s: float | None = None,
    ) -> Reply:
        """Ask for one image's detections and wait for the answer.

        The answer may be an error reply (`reply.success` False, `reply.error` the
        typed error): those are the worker's verdict on the request.

        Raises:
            ImageTooLarge: the image cannot fit in a record (`--max-message-bytes`
                minus the headers' room), or the topic refused the record as too large.
            RequestTimeout: no answer in `timeout_s`.
            NotAuthorized: this client may not write to the model's request topic.
            ServiceUnavailable: the request could not be handed to the broker.
        """
        limit = self.settings.max_record_image_bytes()
        if len(image) > limit:
            raise ImageTooLarge(
                f"the image has {len(image)} bytes; over Kafka the limit is {limit} "
                "(--max-message-bytes minus 64 KiB for the headers)"
            )
        timeout = self.timeout_s if timeout_s is None else timeout_s
        correlation_id = uuid.uuid4().hex
        request = Request(
            model=model,
            correlation_id=correlation_id,
            image=image,
            key=key,
            reply_to=self.reply_topic,
            confidence=confidence,
            predictions=predictions,
            image_name=image_name,
            deadline_ms=int((time.time() + timeout) * 1000) if self.send_deadline else None,
        )
        topic = self.topics.requests(model)
        # The request carries this span's trace context: the caller's trace (say, the
        # bridge's HTTP request) goes on to the worker, or one starts here.
        with tracer().start_as_current_span(f"{topic} publish", kind=SpanKind.PRODUCER):
            return await self._ask(
                correlation_id,
                topic,
                image,
                key,
                with_trace(request.headers()),
                timeout,
                f"no answer from model '{model}' within {timeout:g}s",
            )

    async def load(
        self, model: str = "*", force: bool = False, timeout_s: float | None = None
    ) -> Reply:
        """Ask every worker to load (or with `force`, reload) `model` ('*': all theirs);
        return the first worker's answer.

        Raises:
            RequestTimeout: no worker answered.
            ServiceUnavailable: the command could not be handed to the broker.
        """
        correlation_id = uuid.uuid4().hex
        command = Control(ControlCommand.LOAD, model, force, correlation_id, self.reply_topic)
        timeout = self.timeout_s if timeout_s is None else timeout_s
        return await self._ask(
            correlation_id,
            self.topics.control,
            command.to_json(),
            None,
            [],
            timeout,
            f"no worker answered the load of '{model}' within {timeout:g}s",
        )

    async def _ask(
        self,
        correlation_id: str,
        topic: str,
        value: bytes,
        key: bytes | None,
        headers: list[tuple[str, bytes]],
        timeout_s: float,
        timeout_message: str,
    ) -> Reply:
        """Send a record and wait for the reply that carries `correlation_id`.

        The future is registered before sending, so an answer faster than the
        send's own acknowledgement still finds its caller.
        """
        if self._reader_died is not None:
            raise self._reader_gone()
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._pending[correlation_id] = future
        try:
            await self._send(topic, value, key, headers)
            self.stats.sent += 1
            try:
                return await asyncio.wait_for(future, timeout_s)
            except TimeoutError:
                self.stats.timed_out += 1
                raise RequestTimeout(timeout_message) from None
        finally:
            self._pending.pop(correlation_id, None)

    async def detect_many(
        self,
        model: str,
        images: Iterable[tuple[str, bytes]],
        concurrency: int = 16,
        **options: object,
    ) -> list[Reply]:
        """Detections for many (name, image) pairs, at most `concurrency` in flight,
        in input order. A timeout becomes an error reply instead of stopping the rest."""
        gate = asyncio.Semaphore(concurrency)

        async def one(name: str, data: bytes) -> Reply:
            async with gate:
                try:
                    return await self.detect(model, data, image_name=name, **options)  # type: ignore[arg-type]
                except (RequestTimeout, ServiceUnavailable) as exc:
                    return Reply(None, model, error=exc)

        return list(await asyncio.gather(*(one(n, d) for n, d in images)))

    async def _send(
        self, topic: str, value: bytes, key: bytes | None, headers: list[tuple[str, bytes]]
    ) -> None:
        try:
            await asyncio.wait_for(
                self.producer.send_and_wait(topic, value, key=key, headers=headers),
                self.send_timeout_s,
            )
        except MessageSizeTooLargeError as exc:  # the topic's max.message.bytes is smaller
            raise ImageTooLarge(
                f"topic '{topic}' refused the record as too large ({len(value)} bytes)"
            ) from exc
        except (KafkaError, TimeoutError) as exc:
            attempted = f"Write on topic '{topic}'"
            raise as_not_authorized(exc, self.settings, attempted) or ServiceUnavailable(
                f"cannot hand the request to Kafka: {exc!r}"
            ) from exc

    async def reachable(self, timeout_s: float = 2.0) -> bool:
        """Whether the brokers answer a metadata request now."""
        try:
            await asyncio.wait_for(self.consumer.topics(), timeout_s)
        except (KafkaError, TimeoutError, OSError):
            return False
        return True

    async def _read_replies(self) -> None:
        async for records in kafka_io.follow(self.consumer, "replies"):
            for record in records:
                self._resolve(record.value)

    def _resolve(self, value: bytes | None) -> None:
        try:
            reply = Reply.from_json(value or b"")
        except InvalidRequest:
            log.warning("ignoring a record that is not a reply", extra={"topic": self.reply_topic})
            return
        future = self._pending.get(reply.correlation_id or "")
        if future is None or future.done():
            self.stats.duplicates += 1
            return
        self.stats.answered += 1
        future.set_result(reply)


@contextlib.asynccontextmanager
async def connect(bootstrap: str, **kwargs: object) -> AsyncIterator[DetectClient]:
    """Shortcut: `async with connect("localhost:9092") as client: ...`."""
    client = DetectClient(KafkaClientSettings(bootstrap=bootstrap), **kwargs)  # type: ignore[arg-type]
    async with client:
        yield client


#: How many recent event ids `tracking_events` remembers to drop repeats.
EVENT_IDS_KEPT = 100_000


async def tracking_events(
    settings: KafkaClientSettings,
    model: str,
    camera: str | None = None,
    from_beginning: bool = True,
) -> AsyncIterator[dict[str, Any]]:
    """The events of tracked cameras (`<prefix>.events.<model>`, docs/tracking.md): line
    crossings and zone enter/leave/dwell, as dicts, each event once: a worker that died
    between an event and its camera's state writes the event again with the same id,
    and this drops such repeats (answers carry each box's `track_id` already).

        async for event in tracking_events(settings, "shapes_tf2", camera="dock-1"):
            print(event["kind"], event["target"], event["track_id"])
    """
    topic = Topics(settings.topic_prefix).events(model)
    consumer = kafka_io.consumer(
        settings,
        "events",
        group_id=None,
        auto_offset_reset="earliest" if from_beginning else "latest",
    )
    try:
        await kafka_io.started(consumer)
    except (KafkaError, OSError) as exc:
        raise await explain(exc, settings) from exc
    seen: OrderedDict[str, None] = OrderedDict()  # the latest ids: repeats come soon after
    wanted = None if camera is None else camera.encode()
    try:
        consumer.subscribe([topic])
        # A failed fetch is logged and asked again: the stream outlives a broker restart.
        async for records in kafka_io.follow(consumer, f"tracking events of {model}"):
            for record in records:
                if wanted is not None and record.key != wanted:
                    continue
                with contextlib.suppress(ValueError):
                    event = json.loads(record.value or b"")
                    if isinstance(event, dict) and str(event.get("id")) not in seen:
                        seen[str(event.get("id"))] = None
                        if len(seen) > EVENT_IDS_KEPT:
                            seen.popitem(last=False)
                        yield event
    finally:
        with contextlib.suppress(KafkaError, OSError):
            await consumer.stop()
