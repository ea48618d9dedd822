"""From a detection request to its answer, whatever carries the request.

`Pipeline.submit` takes a `Request` and returns a future of its `Answer`: the
reply, and whether a copy of the request belongs in the dead-letter queue.
The pipeline knows nothing of topics, offsets or JSON: the Kafka worker maps
records to requests and answers back to records (`consumer.records`), the
embedded bridge awaits the answer of an HTTP call directly.

Inside: images are decoded in a thread pool as soon as their request arrives,
so decoding overlaps inference; one inference thread takes batches from the
queue (`batching.collect`), groups them by model and image size, and makes one
engine call per group. A failed engine call is tried again when its error says
it may succeed later (`verdict`), then fails every request of its group, each
with its own error reply.

Requests that conflate (`consumer.conflation`) wait for decoding until the
loop turns, so the older frames of a burst fetched together are answered
`superseded` without ever being decoded; one superseded while it is already
decoding just has its pixels dropped.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, NamedTuple, Protocol

from consumer.batching import CLOSED, collect
from consumer.conflation import Key, LatestWins, conflation_key
from consumer.metrics import WorkerMetrics
from consumer.protocol import Reply, Request, Timing, detection_data
from consumer.settings import EngineSettings
from consumer.spans import RequestSpans
from engines.boxes import Box, Options
from engines.decoders import ImageDecoder, select_decoder
from engines.detector import Detector
from engines.errors import DeadlineExceeded, InferenceFailed, Superseded, TfstreamError

log = logging.getLogger(__name__)


class Verdict(StrEnum):
    ANSWER = "answer"
    """Reply and be done: a success, or an expected failure such as an expired deadline."""
    DEAD_LETTER = "dead_letter"
    """Reply with the error and keep a copy of the request for an operator."""
    RETRY = "retry"
    """Run it again: the error says the same request may succeed."""


def verdict(error: TfstreamError | None, retries_left: int = 0) -> Verdict:
    """What becomes of a request that ended with `error` (None: it succeeded).

    The one place that decides, from the error's own attributes: `retriable`
    errors that are not the request's fault are tried again while retries are
    left; then every error with `dead_letter` set is copied to the DLQ.
    """
    if error is None:
        return Verdict.ANSWER
    if error.retriable and not error.client_error and retries_left > 0:
        return Verdict.RETRY
    return Verdict.DEAD_LETTER if error.dead_letter else Verdict.ANSWER


@dataclass(frozen=True)
class Answer:
    """What the transport delivers for one request."""

    reply: Reply
    dead_letter: bool = False
    """A copy of the request goes to the dead-letter queue beside the reply."""

    @property
    def error(self) -> TfstreamError | None:
        return self.reply.error


class Detectors(Protocol):
    """Where the pipeline finds a model's detector (`consumer.registry.ModelRegistry`)."""

    def detector(self, name: str) -> Detector:
        """The ready detector; raises the `TfstreamError` that answers the request."""
        ...


class Decoded(NamedTuple):
    pixels: Any
    """uint8 [h, w, 3]: a numpy array, or a tf.Tensor where decoded on the GPU."""
    decode_ms: float
    width: int
    """The image as sent; `pixels` may be smaller (a JPEG decoded at the model's size)."""
    height: int
    started_s: float = 0.0
    """`time.perf_counter()` when decoding began."""


@dataclass
class Job:
    """A request accepted by the pipeline, from its arrival to its answer."""

    request: Request
    detector: Detector
    decoded: asyncio.Future[Decoded]
    answer: asyncio.Future[Answer]
    spans: RequestSpans | None = None
    group: Key | None = None
    """Its conflation group; None when it does not conflate."""
    superseded: bool = False
    """Answered `superseded` while it waited: it is not run."""
    arrived_s: float = field(default_factory=time.perf_counter)
    """`time.perf_counter()` at `submit`: the start of its queue time."""


class Pipeline:
    def __init__(
        self,
        registry: Detectors,
        settings: EngineSettings,
        worker_id: str,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.registry = registry
        self.settings = settings
        self.worker_id = worker_id
        self.metrics = metrics or WorkerMetrics()
        self._limits = settings.decode_limits()
        self._queue: asyncio.Queue[Job] = asyncio.Queue()
        self._decode_pool = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="decode")
        self._infer_pool = ThreadPoolExecutor(1, thread_name_prefix="infer")
        self._waiting: LatestWins[Job] = LatestWins()
        self._inflight = 0
        self._runner: asyncio.Task[None] | None = None
        self._decoders: dict[str, ImageDecoder] = {}
        self._decoders_lock = threading.Lock()
        self._max_batch = settings.batch_limit("/CPU:0")

    @property
    def inflight(self) -> int:
        """Requests submitted and not yet answered."""
        return self._inflight

    def start(self) -> None:
        if self._runner is None:
            self._runner = asyncio.get_running_loop().create_task(self._run(), name="pipeline")

    def submit(self, request: Request, spans: RequestSpans | None = None) -> asyncio.Future[Answer]:
        """Accept a request; the future resolves with its answer and never raises.

        `spans`, owned (and ended) by the caller, gets the queue, decode and
        inference steps as child spans."""
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[Answer] = loop.create_future()
        self._inflight += 1
        answer.add_done_callback(self._one_less)
        try:
            detector = self.registry.detector(request.model)
            if request.expired():
                raise DeadlineExceeded("the request's deadline passed before it was fetched")
        except TfstreamError as exc:
            answer.set_result(self.failed(request.model, request.correlation_id, exc))
            return answer
        self._max_batch = self.settings.batch_limit(detector.device)  # one device per process
        group = conflation_key(
            request.model, request.key, request.conflate, self.settings.conflates(request.model)
        )
        job = Job(request, detector, loop.create_future(), answer, spans, group)
        older = self._waiting.arrive(group, job)
        if older is not None:
            older.superseded = True
            older.decoded.cancel()  # no decoding if it has not started
            self._fail(
                older, Superseded("a newer frame with the same key was waiting; it ran instead")
            )
        if group is None:
            self._start_decode(job)
        else:  # a newer frame of the same burst may supersede it before it decodes
            loop.call_soon(self._start_decode, job)
        self._queue.put_nowait(job)
        return answer

    def _start_decode(self, job: Job) -> None:
        if job.decoded.done():  # superseded before its turn
            return
        work = asyncio.get_running_loop().run_in_executor(
            self._decode_pool, self.decode, job.request, job.detector
        )

        def settle(finished: asyncio.Future[Decoded]) -> None:
            if job.decoded.done():  # superseded while decoding: the pixels are dropped
                return
            error = finished.exception()
            if error is not None:
                job.decoded.set_exception(error)
            else:
                job.decoded.set_result(finished.result())

        work.add_done_callback(settle)

    def _one_less(self, _: asyncio.Future[Answer]) -> None:
        self._inflight -= 1

    async def close(self) -> None:
        """Answer everything submitted so far, then stop."""
        self._queue.put_nowait(CLOSED)  # type: ignore[arg-type]
        if self._runner is not None:
            await self._runner
        self._decode_pool.shutdown(wait=False)
        self._infer_pool.shutdown(wait=False)

    # -- the steps; each is one method so that a step can be changed alone -------------

    def decode(self, request: Request, detector: Detector) -> Decoded:
        """Pixels for the request's image; runs in a decode thread.

        Raises:
            InvalidImage, ImageTooLarge: see `engines.images.decode_for_model`.
        """
        started = time.perf_counter()
        image = self._decoder(detector.device).decode(request.image, self._limits, detector.resizer)
        seconds = time.perf_counter() - started
        self.metrics.decode_seconds.observe(seconds)
        return Decoded(image.pixels, seconds * 1000, image.width, image.height, started)

    def _decoder(self, device: str) -> ImageDecoder:
        """CPU, or GPU where models run on one (`--decode-device`); chosen once per device."""
        with self._decoders_lock:
            if device not in self._decoders:
                self._decoders[device] = select_decoder(self.settings.decode_device, device)
            return self._decoders[device]

    async def next_batch(self) -> list[Job]:
        """The jobs of the next engine round; [] once the pipeline is closed.

        Superseded jobs (already answered) are passed over; the others leave the
        conflation waiting room: from now on they run whatever arrives."""
        while True:
            jobs = await collect(
                self._queue,
                self._max_batch,
                self.settings.max_delay_ms / 1000,
                skip=lambda job: job.superseded,
            )
            if not jobs:
                return []
            jobs = [job for job in jobs if not job.superseded]  # while collect waited
            for job in jobs:
                self._waiting.start(job.group, job)
            if jobs:
                return jobs

    def failed(self, model: str, correlation_id: str | None, error: TfstreamError) -> Answer:
        """The answer to a request that will not run (or ran and failed). Transports
        call it too, for what fails before it is a `Request` (a malformed header)."""
        self.metrics.errors.labels(model, error.code).inc()
        self.metrics.answered(model)
        log.log(
            logging.INFO if error.client_error else logging.WARNING,
            "request failed",
            extra={
                "model": model,
                "code": error.code,
                "error": error.message,
                "correlation_id": correlation_id,
            },
        )
        reply = Reply(correlation_id, model, error=error, worker=self.worker_id)
        return Answer(reply, dead_letter=verdict(error) is Verdict.DEAD_LETTER)

    # -- the inference loop ---------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            jobs = await self.next_batch()
            if not jobs:
                return
            try:
                await self._run_batch(jobs)
            except Exception as exc:  # never let one batch stop the worker
                log.exception("batch failed unexpectedly")
                error = InferenceFailed(f"internal error: {type(exc).__name__}")
                for job in jobs:
                    self._fail(job, error)

    async def _run_batch(self, jobs: list[Job]) -> None:
        await asyncio.wait([job.decoded for job in jobs])
        # By engine too: across a reload, jobs of one model may hold the old weights
        # or the new ones, and each group runs on its first job's detector.
        groups: dict[tuple[str, int, tuple[int, ...]], list[Job]] = defaultdict(list)
        for job in jobs:
            error = job.decoded.exception()
            if error is not None:
                if not isinstance(error, TfstreamError):
                    error = InferenceFailed(f"decoding failed: {type(error).__name__}: {error}")
                self._fail(job, error)
            elif job.request.expired():
                late = DeadlineExceeded("the request's deadline passed while it was queued")
                self._fail(job, late)
            else:
                shape = tuple(job.decoded.result().pixels.shape)
                groups[(job.request.model, id(job.detector.engine), shape)].append(job)
        for group in groups.values():
            await self._run_group(group)

    async def _run_group(self, group: list[Job]) -> None:
        """One engine call for jobs of one model and image size, tried again while
        its error says so."""
        model = group[0].request.model
        detector = group[0].detector
        images = [job.decoded.result().pixels for job in group]
        sizes = [(job.decoded.result().width, job.decoded.result().height) for job in group]
        options = [detector.options(j.request.confidence, j.request.predictions) for j in group]
        retries_left = self.settings.inference_retries
        while True:
            started_s = time.perf_counter()
            try:
                found = await self._infer(detector, images, options, sizes)
                break
            except TfstreamError as exc:
                if verdict(exc, retries_left) is Verdict.RETRY:
                    retries_left -= 1
                    log.warning(
                        "engine call failed, trying again",
                        extra={"model": model, "code": exc.code, "error": exc.message},
                    )
                    continue
                for job in group:
                    self._fail(job, exc)
                return
        finished_s = time.perf_counter()
        self.metrics.batch_size.labels(model).observe(len(group))
        self.metrics.inference_seconds.labels(model).observe(finished_s - started_s)
        for job, (width, height), boxes in zip(group, sizes, found, strict=True):
            self.metrics.queue_seconds.labels(model).observe(started_s - job.arrived_s)
            if job.spans is not None:
                decoded = job.decoded.result()
                job.spans.child("queue", job.arrived_s, started_s)
                job.spans.child(
                    "decode", decoded.started_s, decoded.started_s + decoded.decode_ms / 1000
                )
                job.spans.child("inference", started_s, finished_s, batch_size=len(group))
            timing = Timing(
                queue_ms=(started_s - job.arrived_s) * 1000,
                decode_ms=job.decoded.result().decode_ms,
                inference_ms=(finished_s - started_s) * 1000,
                batch_size=len(group),
            )
            data = detection_data(boxes, job.request.image_name, width, height)
            reply = Reply(
                job.request.correlation_id,
                model,
                data=data,
                timing=timing,
                worker=self.worker_id,
                model_version=detector.spec.version,
            )
            self._settle(job, Answer(reply))
        self.metrics.answered(model, len(group))

    async def _infer(
        self,
        detector: Detector,
        images: list[Any],
        options: Sequence[Options],
        sizes: Sequence[tuple[int, int]],
    ) -> list[list[Box]]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._infer_pool, detector.detect, images, options, sizes)

    def _fail(self, job: Job, error: TfstreamError) -> None:
        self._settle(job, self.failed(job.request.model, job.request.correlation_id, error))

    @staticmethod
    def _settle(job: Job, answer: Answer) -> None:
        if not job.answer.done():
            job.answer.set_result(answer)
