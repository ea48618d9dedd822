"""From request records to acknowledged replies, whatever the transport.

`submit` takes a record and returns a future that resolves once the record's
answer (and, for a failed request, its dead-letter copy) has been acknowledged
by the outbox. The Kafka worker commits an offset only when that future is
done; the embedded bridge uses the same pipeline over an in-memory outbox.

Inside: records are checked and their images decoded in a thread pool as soon
as they arrive, so decoding overlaps inference; one inference thread takes
batches from the queue (see `batching.collect`), groups them by model and image
size, and makes one engine call per group. A failed engine call fails every
request of its group, each with its own error reply.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Awaitable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

from consumer.batching import CLOSED, collect
from consumer.metrics import WorkerMetrics
from consumer.protocol import (
    Headers,
    Reply,
    Request,
    Timing,
    Topics,
    detection_data,
    dlq_headers,
    parse_request,
    reply_address,
)
from consumer.registry import ModelRegistry
from consumer.settings import WorkerSettings
from engines.decoders import ImageDecoder, select_decoder
from engines.detector import Detector
from engines.errors import DeadlineExceeded, InferenceFailed, ReplyUndeliverable, TfstreamError
from engines.images import Decoded
from engines.resizer import Resizer

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


@dataclass
class _Job:
    record: Record
    request: Request
    detector: Detector
    decoded: asyncio.Future[tuple[Decoded, float]]
    done: asyncio.Future[None]
    arrived: float = field(default_factory=time.perf_counter)


class Pipeline:
    def __init__(
        self,
        registry: ModelRegistry,
        topics: Topics,
        outbox: Outbox,
        settings: WorkerSettings,
        worker_id: str,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.registry = registry
        self.topics = topics
        self.outbox = outbox
        self.settings = settings
        self.worker_id = worker_id
        self.metrics = metrics or WorkerMetrics()
        self._limits = settings.decode_limits()
        self._queue: asyncio.Queue[_Job] = asyncio.Queue()
        self._decode_pool = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="decode")
        self._infer_pool = ThreadPoolExecutor(1, thread_name_prefix="infer")
        self._deliveries: set[asyncio.Task[None]] = set()
        self._inflight = 0
        self._runner: asyncio.Task[None] | None = None
        self._decoder: ImageDecoder | None = None
        self._decoder_lock = threading.Lock()

    @property
    def inflight(self) -> int:
        """Records submitted whose answer is not yet acknowledged."""
        return self._inflight

    def start(self) -> None:
        if self._runner is None:
            self._runner = asyncio.get_running_loop().create_task(self._run(), name="pipeline")

    def submit(self, record: Record) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._inflight += 1
        done.add_done_callback(self._one_less)
        model = self.topics.model_of(record.topic)
        request: Request | None = None
        try:
            request = parse_request(model, record.key, record.value, record.headers)
            detector = self.registry.detector(model)
            if request.expired():
                raise DeadlineExceeded("the request's deadline passed before it was fetched")
        except TfstreamError as exc:
            self._answer_error(record, model, request, exc, done)
            return done
        decoded = loop.run_in_executor(
            self._decode_pool, self._decode, request.image, detector.resizer
        )
        self._queue.put_nowait(_Job(record, request, detector, decoded, done))
        return done

    def _one_less(self, _: asyncio.Future[None]) -> None:
        self._inflight -= 1

    def _decode(self, data: bytes, resizer: Resizer | None) -> tuple[Decoded, float]:
        started = time.perf_counter()
        decoded = self._image_decoder().decode(data, self._limits, resizer)
        seconds = time.perf_counter() - started
        self.metrics.decode_seconds.observe(seconds)
        return decoded, seconds * 1000

    def _image_decoder(self) -> ImageDecoder:
        """Chosen on first use, once the device models run on is known."""
        with self._decoder_lock:
            if self._decoder is None:
                self._decoder = select_decoder(
                    self.settings.decode_device, self.registry.placement()
                )
            return self._decoder

    async def close(self) -> None:
        """Finish everything submitted so far, deliver its answers, then stop."""
        self._queue.put_nowait(CLOSED)  # type: ignore[arg-type]
        if self._runner is not None:
            await self._runner
        while self._deliveries:
            await asyncio.gather(*list(self._deliveries), return_exceptions=True)
        self._decode_pool.shutdown(wait=False)
        self._infer_pool.shutdown(wait=False)

    async def _run(self) -> None:
        max_batch = self.settings.batch_limit(await asyncio.to_thread(self.registry.placement))
        while True:
            jobs = await collect(self._queue, max_batch, self.settings.max_delay_ms / 1000)
            if not jobs:
                return
            try:
                await self._run_batch(jobs)
            except Exception as exc:  # never let one batch stop the worker
                log.exception("batch failed unexpectedly")
                for job in jobs:
                    if not job.done.done():
                        self._answer_error(
                            job.record,
                            job.request.model,
                            job.request,
                            InferenceFailed(f"internal error: {exc}"),
                            job.done,
                        )

    async def _run_batch(self, jobs: list[_Job]) -> None:
        await asyncio.wait([job.decoded for job in jobs])
        groups: dict[tuple[str, tuple[int, ...]], list[_Job]] = defaultdict(list)
        for job in jobs:
            error = job.decoded.exception()
            if error is not None:
                if not isinstance(error, TfstreamError):
                    error = InferenceFailed(f"decoding failed: {error}")
                self._answer_error(job.record, job.request.model, job.request, error, job.done)
            elif job.request.expired():
                self._answer_error(
                    job.record,
                    job.request.model,
                    job.request,
                    DeadlineExceeded("the request's deadline passed while it was queued"),
                    job.done,
                )
            else:
                groups[(job.request.model, tuple(job.decoded.result()[0].pixels.shape))].append(job)
        loop = asyncio.get_running_loop()
        for (model, _), group in groups.items():
            decoded = [job.decoded.result()[0] for job in group]
            images = [d.pixels for d in decoded]
            sizes = [(d.width, d.height) for d in decoded]
            detector = group[0].detector
            options = [detector.options(j.request.confidence, j.request.predictions) for j in group]
            started = time.perf_counter()
            try:
                boxes = await loop.run_in_executor(
                    self._infer_pool, detector.detect, images, options, sizes
                )
            except TfstreamError as exc:
                for job in group:
                    self._answer_error(job.record, model, job.request, exc, job.done)
                continue
            finished = time.perf_counter()
            self.metrics.batch_size.labels(model).observe(len(group))
            self.metrics.inference_seconds.labels(model).observe(finished - started)
            for job, image, found in zip(group, decoded, boxes, strict=True):
                self.metrics.queue_seconds.labels(model).observe(started - job.arrived)
                timing = Timing(
                    queue_ms=(started - job.arrived) * 1000,
                    decode_ms=job.decoded.result()[1],
                    inference_ms=(finished - started) * 1000,
                    batch_size=len(group),
                )
                data = detection_data(found, job.request.image_name, image.width, image.height)
                reply = Reply(
                    job.request.correlation_id,
                    model,
                    data=data,
                    timing=timing,
                    worker=self.worker_id,
                )
                topic = job.request.reply_to or self.topics.results(model)
                self._deliver(job.done, [self._send_reply(job.record, model, topic, reply)])
            self.metrics.answered(model, len(group))

    def _answer_error(
        self,
        record: Record,
        model: str,
        request: Request | None,
        error: TfstreamError,
        done: asyncio.Future[None],
    ) -> None:
        """Answer a request that will not run, and copy it to the DLQ unless it merely expired."""
        if request is not None:
            topic, correlation_id = (
                request.reply_to or self.topics.results(model),
                request.correlation_id,
            )
        else:
            topic, correlation_id = reply_address(self.topics, model, record.headers)
        self.metrics.errors.labels(model, error.code).inc()
        self.metrics.answered(model)
        log.info(
            "request failed",
            extra={
                "model": model,
                "code": error.code,
                "error": error.message,
                "topic": record.topic,
                "partition": record.partition,
                "offset": record.offset,
                "correlation_id": correlation_id,
            },
        )
        reply = Reply(correlation_id, model, error=error, worker=self.worker_id)
        sends = [self._send_reply(record, model, topic, reply)]
        if not isinstance(error, DeadlineExceeded):
            sends.append(self._dead_letter(record, model, error))
        self._deliver(done, sends)

    async def _send_reply(self, record: Record, model: str, topic: str, reply: Reply) -> None:
        """The reply to `topic`; if that topic cannot take it (a client's reply topic
        deleted while its request waited), to the model's results topic; if that
        fails too, the request goes to the DLQ with the reason, so it is never
        lost and never blocks its partition."""
        problem: ReplyUndeliverable | None = None
        for destination in dict.fromkeys([topic, self.topics.results(model)]):
            try:
                await self.outbox.send(destination, reply.to_json(), record.key, reply.headers())
            except ReplyUndeliverable as exc:
                problem = exc
                log.warning(
                    "reply undeliverable", extra={"topic": destination, "error": exc.message}
                )
                continue
            return
        assert problem is not None
        await self._dead_letter(record, model, problem)

    def _dead_letter(self, record: Record, model: str, error: TfstreamError) -> Awaitable[None]:
        self.metrics.dlq.labels(model, error.code).inc()
        headers = dlq_headers(
            record.headers, error, record.topic, record.partition, record.offset, self.worker_id
        )
        return self.outbox.send(self.topics.dlq, record.value, record.key, headers)

    def _deliver(self, done: asyncio.Future[None], acks: Sequence[Awaitable[None]]) -> None:
        """Resolve `done` once every send is acknowledged, or fail it (then the
        request stays uncommitted and is read again)."""

        async def settle() -> None:
            try:
                await asyncio.gather(*acks)
            except Exception as exc:
                if not done.done():
                    done.set_exception(exc)
                return
            if not done.done():
                done.set_result(None)

        task = asyncio.get_running_loop().create_task(settle())
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)
