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

Requests that conflate (see `conflation`) wait for decoding until the loop
turns, so the older frames of a burst fetched together are answered
`superseded` without ever being decoded; one that is superseded while already
decoding just has its pixels dropped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from consumer.batching import CLOSED, collect
from consumer.conflation import Key, LatestWins, conflation_key
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
from consumer.spans import RequestSpans
from engines.detector import Detector
from engines.errors import (
    DeadlineExceeded,
    InferenceFailed,
    ReplyUndeliverable,
    Superseded,
    TfstreamError,
)
from engines.images import decode_image

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
    decoded: asyncio.Future[tuple[np.ndarray, float, float]]
    """Pixels, and the decode's start and end (`perf_counter`)."""
    done: asyncio.Future[None]
    spans: RequestSpans
    group: Key | None = None
    """Its conflation group, None when it does not conflate."""
    arrived: float = field(default_factory=time.perf_counter)

    @property
    def superseded(self) -> bool:
        return self.decoded.cancelled()


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
        self._waiting: LatestWins[_Job] = LatestWins()
        self._inflight = 0
        self._runner: asyncio.Task[None] | None = None

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
        spans = RequestSpans(record.topic, record.partition, record.offset, record.headers)
        request: Request | None = None
        try:
            request = parse_request(model, record.key, record.value, record.headers)
            detector = self.registry.detector(model)
            if request.expired():
                raise DeadlineExceeded("the request's deadline passed before it was fetched")
        except TfstreamError as exc:
            self._answer_error(record, model, request, exc, done, spans)
            return done
        group = conflation_key(
            record.topic, record.key, request.conflate, self.settings.conflates(model)
        )
        job = _Job(record, request, detector, loop.create_future(), done, spans, group)
        older = self._waiting.arrive(group, job)
        if older is not None:
            older.decoded.cancel()
            self._answer_error(
                older.record,
                model,
                older.request,
                Superseded("a newer frame with the same key was waiting; it was run instead"),
                older.done,
                older.spans,
            )
        loop.call_soon(self._start_decode, job)
        self._queue.put_nowait(job)
        return done

    def _start_decode(self, job: _Job) -> None:
        if job.decoded.done():  # superseded before its turn
            return
        work = asyncio.get_running_loop().run_in_executor(
            self._decode_pool, self._decode, job.request.image
        )

        def settle(finished: asyncio.Future[tuple[np.ndarray, float, float]]) -> None:
            if job.decoded.done():  # superseded while decoding: drop the pixels
                return
            error = finished.exception()
            if error is not None:
                job.decoded.set_exception(error)
            else:
                job.decoded.set_result(finished.result())

        work.add_done_callback(settle)

    def _one_less(self, _: asyncio.Future[None]) -> None:
        self._inflight -= 1

    def _decode(self, data: bytes) -> tuple[np.ndarray, float, float]:
        started = time.perf_counter()
        pixels = decode_image(data, self._limits)
        finished = time.perf_counter()
        self.metrics.decode_seconds.observe(finished - started)
        return pixels, started, finished

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
        while True:
            jobs = await collect(
                self._queue,
                self.settings.max_batch,
                self.settings.max_delay_ms / 1000,
                skip=lambda job: job.superseded,
            )
            if not jobs:
                return
            # One superseded while `collect` waited for more is answered already.
            jobs = [job for job in jobs if not job.superseded]
            for job in jobs:
                self._waiting.start(job.group, job)
            if not jobs:
                continue
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
                            job.spans,
                        )

    async def _run_batch(self, jobs: list[_Job]) -> None:
        await asyncio.wait([job.decoded for job in jobs])
        groups: dict[tuple[str, tuple[int, ...]], list[_Job]] = defaultdict(list)
        for job in jobs:
            error = job.decoded.exception()
            if error is not None:
                if not isinstance(error, TfstreamError):
                    error = InferenceFailed(f"decoding failed: {error}")
                self._answer_error(
                    job.record, job.request.model, job.request, error, job.done, job.spans
                )
            elif job.request.expired():
                self._answer_error(
                    job.record,
                    job.request.model,
                    job.request,
                    DeadlineExceeded("the request's deadline passed while it was queued"),
                    job.done,
                    job.spans,
                )
            else:
                groups[(job.request.model, job.decoded.result()[0].shape)].append(job)
        loop = asyncio.get_running_loop()
        for (model, _), group in groups.items():
            images = [job.decoded.result()[0] for job in group]
            detector = group[0].detector
            options = [detector.options(j.request.confidence, j.request.predictions) for j in group]
            started = time.perf_counter()
            try:
                boxes = await loop.run_in_executor(
                    self._infer_pool, detector.detect, images, options
                )
            except TfstreamError as exc:
                for job in group:
                    self._answer_error(job.record, model, job.request, exc, job.done, job.spans)
                continue
            finished = time.perf_counter()
            self.metrics.batch_size.labels(model).observe(len(group))
            self.metrics.inference_seconds.labels(model).observe(finished - started)
            for job, image, found in zip(group, images, boxes, strict=True):
                self.metrics.queue_seconds.labels(model).observe(started - job.arrived)
                _, decode_started, decode_finished = job.decoded.result()
                job.spans.child("queue", job.arrived, started)
                job.spans.child("decode", decode_started, decode_finished)
                job.spans.child("inference", started, finished, batch_size=len(group))
                timing = Timing(
                    queue_ms=(started - job.arrived) * 1000,
                    decode_ms=(decode_finished - decode_started) * 1000,
                    inference_ms=(finished - started) * 1000,
                    batch_size=len(group),
                )
                data = detection_data(found, job.request.image_name, image.shape[1], image.shape[0])
                reply = Reply(
                    job.request.correlation_id,
                    model,
                    data=data,
                    timing=timing,
                    worker=self.worker_id,
                )
                topic = job.request.reply_to or self.topics.results(model)
                self._deliver(
                    job.done, [self._send_reply(job.record, model, topic, reply, job.spans)]
                )
                job.done.add_done_callback(lambda _, spans=job.spans: spans.end())
            self.metrics.answered(model, len(group))

    def _answer_error(
        self,
        record: Record,
        model: str,
        request: Request | None,
        error: TfstreamError,
        done: asyncio.Future[None],
        spans: RequestSpans,
    ) -> None:
        """Answer a request that will not run, and copy it to the DLQ unless its error is an
        expected outcome (expired, superseded)."""
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
        sends = [self._send_reply(record, model, topic, reply, spans)]
        if error.dead_letter:
            sends.append(self._dead_letter(record, model, error))
        self._deliver(done, sends)
        done.add_done_callback(lambda _: spans.end(error))

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
