"""From a detection request to its answer, whatever carries the request.

`Pipeline.submit` takes a `Request` and returns a future of its `Answer`: the
reply, and whether a copy of the request belongs in the dead-letter queue.
The pipeline knows nothing of topics, offsets or JSON: the Kafka worker maps
records to requests and answers back to records (`consumer.records`), the
embedded bridge awaits the answer of an HTTP call directly.

Inside: images are decoded in a thread pool as soon as their request arrives,
so decoding overlaps inference. Each model has its own lane: a queue, and
`instances` runners that each take a batch from it (`batching.collect`, at
most what one call of the model takes, `batching.batching_for`), split it by
image size, and make one engine call per size in the lane's inference
threads. So a group is exactly one model call, and its size is the
`batch_size` every answer and the histogram report. A failed engine call is
tried again when its error says it may succeed later (`verdict`), then fails
every request of its group, each with its own error reply.

A request that finds a runner of its model idle (and no batch delay to wait
out) is not sent to the decode pool: the runner takes it at once and, if it is
alone in its batch, decodes it in the same inference-thread call that runs the
model, so a lone request crosses threads twice (to the engine's thread and
back), not four times. Requests that arrive together still decode in the pool,
in parallel.

Requests that conflate (`consumer.conflation`) wait for decoding until the
loop turns, so the older frames of a burst fetched together are answered
`superseded` without ever being decoded; one superseded while it is already
decoding just has its pixels dropped.

A runner is supervised (`consumer.supervision`): one that dies of something a
failed batch does not cover is logged and counted, the requests it held are
answered `inference_failed`, and it starts again; a runner that keeps dying is
failed (the process's liveness turns false) and, once its lane has no runner
left, the lane answers every request `model_unavailable` instead of queueing it
for no one. Nothing given to the pipeline stays unanswered.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import weakref
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, NamedTuple, Protocol

from consumer.batching import CLOSED, Batching, batching_for, collect
from consumer.conflation import Key, LatestWins, conflation_key
from consumer.metrics import WorkerMetrics
from consumer.ordering import Chains
from consumer.protocol import Reply, Request, Timing, detection_data
from consumer.settings import EngineSettings
from consumer.spans import RequestSpans
from consumer.supervision import Restarts, Supervisor
from engines.boxes import Box, Options
from engines.decoders import ImageDecoder, select_decoder
from engines.detector import Detector
from engines.errors import (
    DeadlineExceeded,
    InferenceFailed,
    ModelUnavailable,
    Superseded,
    TfstreamError,
)

log = logging.getLogger(__name__)

#: A runner that dies more often than this is failed, not started again.
RUNNER_RESTARTS = Restarts(limit=3, period_s=60.0)


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


class _NotDecoded(Exception):
    """A lone request's decode failed in the inference thread: `error` answers it."""

    def __init__(self, error: TfstreamError) -> None:
        super().__init__(error.message)
        self.error = error


class _EngineFailed(Exception):
    """A lone request's engine call failed after its image was decoded."""

    def __init__(self, decoded: Decoded, error: TfstreamError) -> None:
        super().__init__(error.message)
        self.decoded = decoded
        self.error = error


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
    decoding: bool = False
    """Its decode has started (in the decode pool, or with its engine call)."""
    arrived_s: float = field(default_factory=time.perf_counter)
    """`time.perf_counter()` at `submit`: the start of its queue time."""
    after: asyncio.Future[Answer] | None = None
    """The answer of the previous request with the same model and key, still pending
    when this one came: this one's answer waits for it (`Pipeline._settle`)."""
    settled: bool = False
    """Its answer is decided (it may still wait for `after`)."""
    taken: bool = False
    """Taken into an engine round by a runner (`Pipeline._take`)."""


@dataclass
class Lane:
    """One model's queue, its runners and the threads its engine calls run in."""

    batching: Batching
    decided_for: weakref.ref[Detector]
    """The detector `batching` was decided for, weakly: a lane must not keep weights
    a reload replaced (on a GPU, their memory) until its model's next request."""
    conflates: bool = False
    """Every request of the model conflates (`--conflate-models`), header or not."""
    queue: asyncio.Queue[Job] = field(default_factory=asyncio.Queue)
    runners: list[asyncio.Task[None]] = field(default_factory=list)
    live_runners: int = 0
    """Runners not failed by their supervision."""
    lost: TfstreamError | None = None
    """Set once every runner was failed: the lane's requests are answered with it."""
    threads: ThreadPoolExecutor | None = None
    idle: int = 0
    """Runners waiting for the next batch: a request arriving now is taken at once."""
    running_groups: set[Key] = field(default_factory=set)
    """Conflation groups with a job in an engine round now (`instances` > 1)."""
    parked: dict[Key, Job] = field(default_factory=dict)
    """Per running group, the job taken while it ran: still waiting (a newer frame
    supersedes it), run next by the runner that frees the group."""


@dataclass
class Runner:
    """One of a lane's runners, and the jobs of the round it is in."""

    model: str
    lane: Lane
    held: list[Job] = field(default_factory=list)
    """Taken from the queue and not yet released: answered if the runner dies."""


def _unrunnable(request: Request, decode_error: BaseException | None) -> TfstreamError | None:
    """Why a request taken from the queue will not run: its decoding failed (an
    untyped failure wrapped as inference_failed), or its deadline passed while it
    waited; None when it can run."""
    if decode_error is not None:
        if isinstance(decode_error, TfstreamError):
            return decode_error
        return InferenceFailed(f"decoding failed: {type(decode_error).__name__}: {decode_error}")
    if request.expired():
        return DeadlineExceeded("the request's deadline passed while it was queued")
    return None


class Pipeline:
    def __init__(
        self,
        registry: Detectors,
        settings: EngineSettings,
        worker_id: str,
        metrics: WorkerMetrics | None = None,
        supervisor: Supervisor | None = None,
    ) -> None:
        """`supervisor`: the process's, whose failures turn its liveness false
        (default: one of the pipeline's own, which only logs and counts)."""
        self.registry = registry
        self.settings = settings
        self.worker_id = worker_id
        self.metrics = metrics or WorkerMetrics()
        self.supervisor = supervisor or Supervisor()
        self._limits = settings.decode_limits()
        self._decode_pool = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="decode")
        self._lanes: dict[str, Lane] = {}
        self._waiting: LatestWins[Job] = LatestWins()
        self._inflight = 0
        self._started = False
        self._decoded_lock = threading.Lock()
        self._decoded_ready: list[tuple[Job, Decoded | BaseException]] = []
        self._wake_pending = False
        self._decoders: dict[str, ImageDecoder] = {}
        self._decoders_lock = threading.Lock()
        self._last_answer: Chains[tuple[str, bytes], Answer] = Chains()
        """Per model and key, the last answer: answers of one key keep the order of
        their requests (a camera's frames on its partition) even when batches of
        them run at once (`instances` > 1) or one batch makes several engine calls
        (one per image size)."""

    @property
    def inflight(self) -> int:
        """Requests submitted and not yet answered."""
        return self._inflight

    def start(self) -> None:
        self._started = True
        for name, lane in self._lanes.items():
            self._start_lane(name, lane)

    def batching(self, model: str) -> Batching | None:
        """How the model's requests are batched; None before its first request."""
        lane = self._lanes.get(model)
        return None if lane is None else lane.batching

    def _lane(self, model: str, detector: Detector) -> Lane:
        """The model's lane, made at its first request (its batching needs the loaded
        model: the graph's fixed batch, its device, its config.json). A reloaded
        model's batch limits apply from its first request; its instances, which
        are threads already running, from the next start."""
        lane = self._lanes.get(model)
        if lane is not None and lane.decided_for() is not detector:
            decided = batching_for(self.settings, detector)
            lane.batching = replace(decided, instances=lane.batching.instances)
            lane.decided_for = weakref.ref(detector)
        if lane is None:
            lane = self._lanes[model] = Lane(
                batching_for(self.settings, detector),
                weakref.ref(detector),
                self.settings.conflates(model),
            )
            log.info(
                "batching",
                extra={
                    "model": model,
                    "max_batch": lane.batching.max_batch,
                    "max_delay_ms": lane.batching.max_delay_s * 1000,
                    "instances": lane.batching.instances,
                },
            )
            if self._started:
                self._start_lane(model, lane)
        return lane

    def _start_lane(self, model: str, lane: Lane) -> None:
        if lane.runners:
            return
        count = lane.batching.instances
        lane.threads = ThreadPoolExecutor(count, thread_name_prefix=f"infer-{model}")
        loop = asyncio.get_running_loop()
        lane.live_runners = count
        lane.runners = [
            loop.create_task(self._supervised(Runner(model, lane), f"pipeline-{model}-{i}"))
            for i in range(count)
        ]

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
        except TfstreamError as exc:
            answer.set_result(self.failed(request.model, request.correlation_id, exc))
            return answer
        if request.expired():
            expired = DeadlineExceeded("the request's deadline passed before it was fetched")
            version = detector.spec.version
            answer.set_result(self.failed(request.model, request.correlation_id, expired, version))
            return answer
        lane = self._lane(request.model, detector)
        if lane.lost is not None:
            failed = self.failed(
                request.model, request.correlation_id, lane.lost, detector.spec.version
            )
            answer.set_result(failed)
            return answer
        group = conflation_key(request.model, request.key, request.conflate, lane.conflates)
        job = Job(request, detector, loop.create_future(), answer, spans, group)
        if request.key is not None:  # answered after the previous request of its key
            job.after = self._last_answer.follow((request.model, request.key), answer)
        older = self._waiting.arrive(group, job)
        if older is not None:
            older.superseded = True
            older.decoded.cancel()  # no decoding if it has not started
            self._fail(
                older, Superseded("a newer frame with the same key was waiting; it ran instead")
            )
        # An idle runner for this very job (not one that jobs queued before it will take):
        taken_at_once = lane.idle > lane.queue.qsize() and lane.batching.max_delay_s == 0
        lane.queue.put_nowait(job)
        if group is not None:  # a newer frame of the same burst may supersede it before it decodes
            loop.call_soon(self._start_decode, job)
        elif not taken_at_once:  # decode while it waits for its batch
            self._start_decode(job)
        # else: an idle runner takes it in this loop turn and decides (`_run_batch`)
        return answer

    def _start_decode(self, job: Job) -> None:
        if job.decoded.done() or job.decoding:  # superseded, or taken with its engine call
            return
        job.decoding = True
        self._decode_pool.submit(self._decode_in_pool, job)

    def _decode_in_pool(self, job: Job) -> None:
        """In a decode thread: decode, then hand the result to the loop. Results that
        finish while the loop has not yet collected the previous ones go with them:
        under load, one wake-up of the loop per burst of frames, not one per frame."""
        result: Decoded | BaseException
        try:
            result = self.decode(job.request, job.detector)
        except StopIteration as exc:  # a future refuses it (PEP 479): it would never settle
            result = RuntimeError(f"StopIteration {exc}".strip())
        except BaseException as exc:  # settled on the loop, as any outcome
            result = exc
        with self._decoded_lock:
            self._decoded_ready.append((job, result))
            if self._wake_pending:
                return
            self._wake_pending = True
        job.decoded.get_loop().call_soon_threadsafe(self._settle_decoded)

    def _settle_decoded(self) -> None:
        with self._decoded_lock:
            ready, self._decoded_ready = self._decoded_ready, []
            self._wake_pending = False
        for job, result in ready:
            if job.decoded.done():  # superseded while decoding: the pixels are dropped
                continue
            if isinstance(result, BaseException):
                job.decoded.set_exception(result)
            else:
                job.decoded.set_result(result)

    def _one_less(self, _: asyncio.Future[Answer]) -> None:
        self._inflight -= 1

    async def close(self) -> None:
        """Answer everything submitted so far, then stop."""
        for lane in self._lanes.values():
            lane.queue.put_nowait(CLOSED)  # type: ignore[arg-type]
        for lane in self._lanes.values():
            if lane.runners:
                await asyncio.gather(*lane.runners)
        self._decode_pool.shutdown(wait=False)
        for lane in self._lanes.values():
            if lane.threads is not None:
                lane.threads.shutdown(wait=False)

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

    async def next_batch(self, lane: Lane, held: list[Job] | None = None) -> list[Job]:
        """The jobs of the lane's next engine round; [] once the pipeline is closed.

        Superseded jobs (already answered) are passed over; the others leave the
        conflation waiting room: from now on they run whatever arrives. `held`
        gets the jobs this runner answers for: those taken from the queue as soon
        as they are, then those it runs (not those parked behind another round)."""
        while True:
            lane.idle += 1
            try:
                jobs = await collect(
                    lane.queue,
                    lane.batching.max_batch,
                    lane.batching.max_delay_s,
                    skip=lambda job: job.superseded,
                )
            finally:
                lane.idle -= 1
            if held is not None:
                held[:] = jobs
            if not jobs:
                return []
            jobs = [job for job in jobs if not job.superseded]  # while collect waited
            ready = [job for job in jobs if self._take(lane, job)]
            if held is not None:
                held[:] = ready
            if ready:
                return ready

    def _take(self, lane: Lane, job: Job) -> bool:
        """Start `job`, unless a job of its conflation group is running: then it is
        parked, still waiting. So a camera has one frame in an engine round at a
        time whatever the `instances`, and the frame that runs next is the newest
        when a round ends, not one a second instance took a round earlier."""
        if job.group is not None and job.group in lane.running_groups:
            lane.parked[job.group] = job  # the one it replaces was superseded on arrival
            return False
        self._waiting.start(job.group, job)
        if job.group is not None:
            lane.running_groups.add(job.group)
        job.taken = True
        return True

    def _release(self, lane: Lane, jobs: list[Job]) -> list[Job]:
        """The round of `jobs` is over: free their groups; the parked jobs of those
        groups that are still waiting, started, for this runner to run next."""
        after: list[Job] = []
        for job in jobs:
            if job.group is None:
                continue
            lane.running_groups.discard(job.group)
            parked = lane.parked.pop(job.group, None)
            if parked is not None and not parked.superseded and self._take(lane, parked):
                after.append(parked)
        return after

    def failed(
        self,
        model: str,
        correlation_id: str | None,
        error: TfstreamError,
        model_version: int | None = None,
    ) -> Answer:
        """The answer to a request that will not run (or ran and failed). Transports
        call it too, for what fails before it is a `Request` (a malformed header).
        `model_version`: the version the request was given to, once one was (an
        operator tells a new version's failures from the old one's by it)."""
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
        reply = Reply(
            correlation_id, model, error=error, worker=self.worker_id, model_version=model_version
        )
        return Answer(reply, dead_letter=verdict(error) is Verdict.DEAD_LETTER)

    # -- the inference loop ---------------------------------------------------------------

    async def _supervised(self, runner: Runner, name: str) -> None:
        """Run `runner` until the pipeline closes, started again after each death
        while `RUNNER_RESTARTS` allows."""
        ended = await self.supervisor.guard(
            name,
            lambda: self._run(runner),
            RUNNER_RESTARTS,
            lambda exc: self._runner_died(runner, exc),
        )
        if not ended:
            self._runner_failed(runner)

    async def _run(self, runner: Runner) -> None:
        lane = runner.lane
        while True:
            jobs = await self.next_batch(lane, runner.held)
            if not jobs:
                return
            while jobs:
                try:
                    await self._run_batch(lane, jobs)
                except Exception as exc:  # never let one batch stop the worker
                    log.exception("batch failed unexpectedly")
                    error = InferenceFailed(f"internal error: {type(exc).__name__}")
                    for job in jobs:
                        self._fail(job, error)
                jobs = self._release(lane, jobs)
                runner.held[:] = jobs
            runner.held.clear()

    def _runner_died(self, runner: Runner, exc: BaseException) -> None:
        """Answer what a dead runner held and free its conflation groups, so the
        runner that starts next (or another one) finds the lane as if its round
        had ended in an error."""
        held, runner.held = runner.held, []
        lane = runner.lane
        error = InferenceFailed(f"internal error: the model's runner died ({type(exc).__name__})")
        for job in held:
            if job.group is not None and lane.parked.get(job.group) is job:
                continue  # behind another runner's round of its group: that runner runs it
            self._abandon(job, error)
            if job.group is None or not job.taken:
                continue
            lane.running_groups.discard(job.group)
            parked = lane.parked.pop(job.group, None)
            if parked is not None and not parked.superseded:
                lane.queue.put_nowait(parked)  # still waiting: taken again like any other

    def _abandon(self, job: Job, error: TfstreamError) -> None:
        """Answer `job` with `error` unless it is answered; nothing supersedes it then."""
        self._waiting.start(job.group, job)
        if not job.settled:
            self._fail(job, error)

    def _runner_failed(self, runner: Runner) -> None:
        """A runner was failed for good; once none of its lane is left, the lane's
        requests, queued or still to come, are answered instead of waiting."""
        lane = runner.lane
        lane.live_runners -= 1
        if lane.live_runners > 0:
            return
        lane.lost = ModelUnavailable(
            f"model '{runner.model}': its runners kept failing; this worker reports itself "
            "not live and waits to be restarted"
        )
        closed = False
        while not lane.queue.empty():
            job = lane.queue.get_nowait()
            if job is CLOSED:
                closed = True
            else:
                self._abandon(job, lane.lost)
        for job in lane.parked.values():
            self._abandon(job, lane.lost)
        lane.parked.clear()
        if closed:
            lane.queue.put_nowait(CLOSED)  # type: ignore[arg-type]

    async def _run_batch(self, lane: Lane, jobs: list[Job]) -> None:
        """The lane's jobs (one model), one engine call per image size."""
        if len(jobs) == 1 and not jobs[0].decoding and jobs[0].group is None:
            await self._run_group(lane, jobs, decode=True)
            return
        for job in jobs:  # taken before their decode started: decode them side by side
            self._start_decode(job)
        await asyncio.wait([job.decoded for job in jobs])
        # By engine too: across a reload, jobs of one model may hold the old weights
        # or the new ones, and each group runs on its first job's detector.
        groups: dict[tuple[int, tuple[int, ...]], list[Job]] = defaultdict(list)
        for job in jobs:
            unrunnable = _unrunnable(job.request, job.decoded.exception())
            if unrunnable is not None:
                self._fail(job, unrunnable)
            else:
                shape = tuple(job.decoded.result().pixels.shape)
                groups[(id(job.detector.engine), shape)].append(job)
        for group in groups.values():
            await self._run_group(lane, group)

    async def _run_group(self, lane: Lane, group: list[Job], decode: bool = False) -> None:
        """One engine call for jobs of one model and image size, tried again while
        its error says so. With `decode`, the group's one job is decoded first, in
        the same call to the inference thread."""
        model = group[0].request.model
        detector = group[0].detector
        options = [detector.options(j.request.confidence, j.request.predictions) for j in group]
        retries_left = self.settings.inference_retries
        while True:
            started_s = time.perf_counter()
            try:
                if decode:
                    decode = False
                    lone = await self._run_lone(lane, group[0], options[0])
                    if lone is None:  # not decoded: answered with its error
                        return
                    started_s, found = lone
                else:
                    images = [job.decoded.result().pixels for job in group]
                    sizes = [(j.decoded.result().width, j.decoded.result().height) for j in group]
                    found = await self._infer(lane, detector, images, options, sizes)
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
        self._answer(group, started_s, time.perf_counter(), found)

    async def _run_lone(
        self, lane: Lane, job: Job, options: Options
    ) -> tuple[float, list[list[Box]]] | None:
        """Decode and run a lone request in one call to the inference thread; None
        when it could not be decoded (it is answered then).

        Raises:
            TfstreamError: the engine call failed; the pixels are kept for a retry.
        """
        job.decoding = True
        loop = asyncio.get_running_loop()
        try:
            decoded, started_s, found = await loop.run_in_executor(
                lane.threads, self._decode_and_detect, job, options
            )
        except _NotDecoded as failed:
            job.decoded.cancel()
            self._fail(job, failed.error)
            return None
        except _EngineFailed as failed:
            job.decoded.set_result(failed.decoded)
            raise failed.error from None
        job.decoded.set_result(decoded)
        return started_s, found

    def _decode_and_detect(
        self, job: Job, options: Options
    ) -> tuple[Decoded, float, list[list[Box]]]:
        """In the inference thread: decode a lone request, then run it; returns the
        pixels, the engine call's start (`perf_counter`) and its boxes. Nothing is
        handed to the loop meanwhile: one wake-up of the loop, when it is done.

        Raises:
            _NotDecoded: the image could not be decoded, or the deadline passed.
            _EngineFailed: the engine call failed (with the pixels, for a retry).
        """
        decode_error: Exception | None = None
        try:
            decoded = self.decode(job.request, job.detector)
        except Exception as exc:
            decode_error = exc
        unrunnable = _unrunnable(job.request, decode_error)
        if unrunnable is not None:
            raise _NotDecoded(unrunnable) from None
        started_s = time.perf_counter()
        size = [(decoded.width, decoded.height)]
        try:
            return decoded, started_s, job.detector.detect([decoded.pixels], [options], size)
        except TfstreamError as exc:
            raise _EngineFailed(decoded, exc) from None

    def _answer(
        self, group: list[Job], started_s: float, finished_s: float, found: list[list[Box]]
    ) -> None:
        """Answer each job of an engine call that succeeded."""
        model = group[0].request.model
        sizes = [(job.decoded.result().width, job.decoded.result().height) for job in group]
        self.metrics.batch_size.labels(model).observe(len(group))
        self.metrics.inference_seconds.labels(model).observe(finished_s - started_s)
        queue_seconds = self.metrics.queue_seconds.labels(model)
        for job, (width, height), boxes in zip(group, sizes, found, strict=True):
            queue_seconds.observe(started_s - job.arrived_s)
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
                model_version=group[0].detector.spec.version,
            )
            self._settle(job, Answer(reply))
        self.metrics.answered(model, len(group))

    async def _infer(
        self,
        lane: Lane,
        detector: Detector,
        images: list[Any],
        options: Sequence[Options],
        sizes: Sequence[tuple[int, int]],
    ) -> list[list[Box]]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(lane.threads, detector.detect, images, options, sizes)

    def _fail(self, job: Job, error: TfstreamError) -> None:
        request = job.request
        version = job.detector.spec.version
        self._settle(job, self.failed(request.model, request.correlation_id, error, version))

    @staticmethod
    def _settle(job: Job, answer: Answer) -> None:
        """Answer the job, once the answer of the request of its key before it is out."""
        job.settled = True

        def now(_: object = None) -> None:
            if not job.answer.done():
                job.answer.set_result(answer)

        if job.after is not None and not job.after.done():
            job.after.add_done_callback(now)
        else:
            now()
