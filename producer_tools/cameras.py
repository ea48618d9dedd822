"""`tfstream-cameras CONFIG`: many cameras in one process, each frame a request on Kafka.

Each camera of the YAML file (see `producer_tools.camera_config`) gets a reader
thread that drains its stream and keeps the newest decoded frame
(`producer_tools.camera_reader`), and a sender task that, at the camera's fps,
takes that frame, encodes it to fit the message limit and produces it to the
model's request topic through `tfstream-stream`'s own send path
(`producer_tools.stream.FrameSender`): keyed by camera id, correlation id
`<camera>:<n>:<send ms>`, a deadline, the trace context when tracing is on;
the gateway adds `conflate: latest` (of a camera's frames waiting at a worker
only the newest runs).

A camera that fails is that camera's problem: it reconnects with a capped
backoff while the others flow. Editing the file (checked every
--reload-interval-s) or SIGHUP adds, removes and restarts only the cameras that
changed. SIGTERM stops every reader within 2 s whatever its connection is doing
(readers are daemon threads: one blocked inside FFmpeg's connect is abandoned,
not waited for).

    tfstream-cameras cameras.yaml --bootstrap kafka:9092 --metrics-port 9410
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from pydantic import Field
from pydantic_settings import CliPositionalArg

from consumer import kafka_io
from consumer.protocol import Topics
from consumer.settings import KafkaClientSettings
from consumer.startup import until_ready
from engines.errors import InvalidCameraConfig, TfstreamError
from engines.logs import configure_logging
from engines.settings import LoggingSettings, cli_config, parse_cli
from engines.tracing import TracingSettings, configure_tracing, tracer, tracing_active
from producer_tools.camera_config import CameraConfig, load_cameras
from producer_tools.camera_encode import FrameTooLarge, encode
from producer_tools.camera_metrics import CameraCounters, CameraMetrics, CameraState
from producer_tools.camera_reader import CameraReader, Timeouts
from producer_tools.camera_states import publish_states
from producer_tools.stream import FrameSender

log = logging.getLogger(__name__)

STOP_READERS_S = 0.5
"""Of the 2 s a SIGTERM allows, how long to wait for readers to end by themselves."""
RATE_WINDOW_S = 5.0


class CamerasSettings(LoggingSettings, TracingSettings, KafkaClientSettings):
    """tfstream-cameras: read many cameras (RTSP, HTTP MJPEG/HLS, files, devices, image
    folders) listed in a YAML file and send their frames to the models' request topics,
    keyed by camera id, newest frame first, each with a deadline. Cameras that fail are
    reconnected; the file is re-read when it changes or on SIGHUP. Every option is also an
    environment variable TFSTREAM_<OPTION>."""

    model_config = cli_config("tfstream-cameras")

    config: CliPositionalArg[Path]
    """The cameras YAML file (`cameras:` a list of id, url, model, fps...)."""
    metrics_host: str = "0.0.0.0"
    """Address of /metrics, /health/live, /health/ready and /cameras."""
    metrics_port: int = Field(default=9410, ge=0, le=65535)
    """Port of /metrics, /health/live, /health/ready and /cameras; 0 turns it off."""
    connect_timeout_s: float = Field(default=10.0, gt=0)
    """How long opening a camera may take before it is retried."""
    read_timeout_s: float = Field(default=5.0, gt=0)
    """A camera with no frame for this long has stalled: it is reconnected."""
    reconnect_max_s: float = Field(default=5.0, gt=0)
    """Longest wait between two connection attempts (the backoff doubles up to it)."""
    reload_interval_s: float = Field(default=2.0, ge=0)
    """How often the file is checked for changes; 0: only on SIGHUP."""
    states_interval_s: float = Field(default=2.0, ge=0)
    """How often each camera's state is published to <prefix>.cameras (keyed by camera id,
    compacted), where the bridge's live page reads it; 0: not published."""


@dataclass
class _Rate:
    samples: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=64))

    def add(self, now: float, count: int) -> float:
        self.samples.append((now, count))
        while len(self.samples) > 2 and now - self.samples[0][0] > RATE_WINDOW_S:
            self.samples.popleft()
        (t0, c0), (t1, c1) = self.samples[0], self.samples[-1]
        return (c1 - c0) / (t1 - t0) if t1 > t0 else 0.0


@dataclass
class Camera:
    config: CameraConfig
    reader: CameraReader
    sender: FrameSender | None = None
    """Made with the first frame sent, once the producer is there."""
    task: asyncio.Task[None] | None = None
    sent: int = 0
    shrunk: int = 0
    too_large: int = 0
    unsent: int = 0
    """Taken from the reader but not sent (no topic yet for its model)."""
    last_age_s: float | None = None
    fps_in: float = 0.0
    fps_out: float = 0.0
    rate_in: _Rate = field(default_factory=_Rate)
    rate_out: _Rate = field(default_factory=_Rate)


class Gateway:
    """The running cameras; `apply()` makes them match a configuration.

    `producer` is None until the broker answers: the cameras connect (and are
    reported) meanwhile, their frames counted as superseded until there is a broker
    and a request topic to send them to."""

    def __init__(self, settings: CamerasSettings, producer: AIOKafkaProducer | None = None) -> None:
        self.settings = settings
        self.producer = producer
        self.topics = Topics(settings.topic_prefix)
        self.cameras: dict[str, Camera] = {}
        self.timeouts = Timeouts(
            connect_s=settings.connect_timeout_s,
            read_s=settings.read_timeout_s,
            backoff_max_s=settings.reconnect_max_s,
        )
        self.metrics = CameraMetrics(self.counters, self.states, self.ready)
        self._known_topics: set[str] = set()
        self._waiting: set[str] = set()
        """Request topics found missing (logged once each until they appear)."""
        self._topics_checked = 0.0
        self._topics_lock = asyncio.Lock()
        self.abandoned = 0
        """Readers left inside a blocking FFmpeg call when the gateway stopped."""

    # -- configuration -----------------------------------------------------

    def apply(self, wanted: dict[str, CameraConfig]) -> tuple[list[str], list[str], list[str]]:
        """Start, stop and restart cameras so that the running ones are `wanted`.

        Cameras whose configuration did not change keep their connection and
        their counters. Returns the ids added, removed and changed.
        """
        added = [i for i in wanted if i not in self.cameras]
        removed = [i for i in self.cameras if i not in wanted]
        changed = [i for i in wanted if i in self.cameras and self.cameras[i].config != wanted[i]]
        for camera_id in removed + changed:
            self._stop_camera(self.cameras.pop(camera_id))
            if camera_id in removed:
                self.metrics.forget(camera_id)
        for camera_id in added + changed:
            self._start_camera(wanted[camera_id])
        if added or removed or changed:
            log.info(
                "cameras applied",
                extra={
                    "added": ",".join(added),
                    "removed": ",".join(removed),
                    "changed": ",".join(changed),
                    "running": len(self.cameras),
                },
            )
        return added, removed, changed

    def _start_camera(self, config: CameraConfig) -> None:
        camera = Camera(config, CameraReader(config, self.timeouts).start())
        camera.task = asyncio.create_task(self._send_loop(camera), name=f"send-{config.id}")
        self.cameras[config.id] = camera

    def _stop_camera(self, camera: Camera) -> None:
        camera.reader.stop()
        if camera.task is not None:
            camera.task.cancel()

    async def stop(self) -> int:
        """Stop every camera; the number of readers still inside FFmpeg after the wait."""
        for camera in self.cameras.values():
            self._stop_camera(camera)
        deadline = time.monotonic() + STOP_READERS_S
        for camera in self.cameras.values():
            await asyncio.to_thread(camera.reader.join, max(0.0, deadline - time.monotonic()))
        left = [c.config.id for c in self.cameras.values() if c.reader.alive]
        tasks = [c.task for c in self.cameras.values() if c.task is not None]
        await asyncio.gather(*tasks, return_exceptions=True)
        if left:
            log.info("readers abandoned inside a blocking call", extra={"cameras": ",".join(left)})
        self.abandoned = len(left)
        return len(left)

    # -- sending ------------------------------------------------------------

    async def _topic_ready(self, model: str) -> bool:
        topic = self.topics.requests(model)
        now = time.monotonic()
        if self.producer is None:
            return False
        if topic not in self._known_topics and now - self._topics_checked > 2.0:
            async with self._topics_lock:
                if time.monotonic() - self._topics_checked > 2.0:
                    try:
                        metadata = await self.producer.client.fetch_all_metadata()
                        self._known_topics = set(metadata.topics())
                    except KafkaError as exc:
                        log.warning("cannot list topics", extra={"error": repr(exc)})
                    self._topics_checked = time.monotonic()
        ready = topic in self._known_topics
        if not ready and topic not in self._waiting:
            self._waiting.add(topic)
            log.warning(
                "no request topic yet: its cameras' frames are not sent until a worker "
                "serving the model creates it",
                extra={"topic": topic},
            )
        elif ready and topic in self._waiting:
            self._waiting.discard(topic)
            log.info("request topic there: sending", extra={"topic": topic})
        return ready

    async def _send_loop(self, camera: Camera) -> None:
        config = camera.config
        loop = asyncio.get_running_loop()
        interval = 1.0 / config.fps
        limit = self.settings.max_record_image_bytes()
        due = loop.time()
        index = 0
        while True:
            due += interval
            delay = due - loop.time()
            if delay < -interval:
                due = loop.time()  # far behind (a long encode): no burst to catch up
            else:
                await asyncio.sleep(max(0.0, delay))
            decoded = camera.reader.take()
            if decoded is None:
                continue
            if not await self._topic_ready(config.model):
                camera.unsent += 1
                continue
            try:
                encoded = await asyncio.to_thread(
                    encode, decoded, config.jpeg_quality, config.max_width, limit
                )
            except FrameTooLarge as exc:
                camera.too_large += 1
                log.warning(
                    "frame not sent",
                    extra={"camera": config.id, "error": exc.code, "detail": exc.message},
                )
                continue
            camera.shrunk += int(encoded.shrunk)
            sent_ms = int(time.time() * 1000)
            age = time.monotonic() - decoded.captured
            camera.last_age_s = age
            self.metrics.frame_age.labels(config.id).observe(age)
            span = (
                tracer().start_as_current_span("camera frame", attributes={"camera": config.id})
                if tracing_active()
                else contextlib.nullcontext()
            )
            camera.sender = camera.sender or self._sender(config)
            with span:
                name = f"{config.id}#{decoded.seq}"
                camera.sent += await camera.sender.send(index, encoded.jpeg, name, sent_ms)
            index += 1

    def _sender(self, config: CameraConfig) -> FrameSender:
        assert self.producer is not None  # _topic_ready said so
        return FrameSender(
            self.producer,
            self.topics.requests(config.model),
            config.model,
            config.id,
            config.deadline_ms or 2000.0 / config.fps,
            conflate=True,
        )

    # -- what is shown ------------------------------------------------------

    def tick_rates(self) -> None:
        now = time.monotonic()
        for camera in self.cameras.values():
            camera.fps_in = camera.rate_in.add(now, camera.reader.stats.frames_in)
            camera.fps_out = camera.rate_out.add(now, camera.sent)

    def ready(self) -> bool:
        return self.producer is not None and all(
            c.reader.stats.tried for c in self.cameras.values()
        )

    def counters(self) -> list[CameraCounters]:
        return [
            CameraCounters(
                camera=c.config.id,
                connected=c.reader.stats.state == "connected",
                frames_decoded=c.reader.stats.frames_in,
                frames_sent=c.sent,
                superseded=c.reader.stats.superseded + c.unsent,
                shrunk=c.shrunk,
                too_large=c.too_large,
                send_failures=c.sender.failed if c.sender else 0,
                reconnects=c.reader.stats.reconnects,
                decode_s=c.reader.stats.decode_s_total,
                lag_s=c.reader.stats.lag_s,
            )
            for c in list(self.cameras.values())
        ]

    def states(self) -> list[CameraState]:
        return [
            CameraState(
                camera=c.config.id,
                url=c.config.masked_url,
                model=c.config.model,
                state=c.reader.stats.state,
                last_error=c.reader.stats.last_error,
                connected=c.reader.stats.state == "connected",
                fps_in=round(c.fps_in, 2),
                fps_out=round(c.fps_out, 2),
                frames_sent=c.sent,
                connects=c.reader.stats.connects,
                reconnects=c.reader.stats.reconnects,
                frame_age_ms=None if c.last_age_s is None else round(c.last_age_s * 1000, 1),
                hwaccel=c.reader.stats.hwaccel,
            )
            for c in list(self.cameras.values())
        ]


async def run_gateway(settings: CamerasSettings, stop: asyncio.Event | None = None) -> Gateway:
    """Run until `stop` is set (or SIGTERM/SIGINT when run as the main program).

    Raises:
        InvalidCameraConfig: the file is not valid at start-up (later, a bad edit is
            logged and the running cameras are kept).
        NotAuthorized, ServiceUnavailable: the broker refused or was not reachable
            within --start-timeout-s.
    """
    wanted = load_cameras(settings.config)
    stop = stop or asyncio.Event()
    reload = asyncio.Event()
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        loop.add_signal_handler(signal.SIGHUP, reload.set)
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
    gateway = Gateway(settings)
    if settings.metrics_port:
        port = gateway.metrics.serve(settings.metrics_host, settings.metrics_port)
        log.info("metrics and health", extra={"port": port})
    # The cameras connect (and /health, /cameras answer) while the broker is awaited:
    # on a brand-new cluster the gateway may start first, and SIGTERM must not wait
    # for --start-timeout-s.
    gateway.apply(wanted)
    connecting = asyncio.create_task(
        until_ready(
            "connecting",
            # 5 ms of linger: the frames of many cameras due at once share one request.
            lambda: kafka_io.started(kafka_io.producer(settings, "cameras", linger_ms=5)),
            settings,
        )
    )
    mtime = _mtime(settings.config)
    publisher: asyncio.Task[None] | None = None
    try:
        while not stop.is_set():
            interval = settings.reload_interval_s or 1.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    _either(stop, reload, connecting=connecting), min(interval, 1.0)
                )
            if gateway.producer is None and connecting.done():
                gateway.producer = connecting.result()  # or its ServiceUnavailable...
                if settings.states_interval_s:
                    publisher = asyncio.create_task(
                        publish_states(settings, gateway.producer, gateway.states, stop)
                    )
            gateway.tick_rates()
            changed = settings.reload_interval_s and _mtime(settings.config) != mtime
            if stop.is_set() or not (reload.is_set() or changed):
                continue
            reload.clear()
            mtime = _mtime(settings.config)
            try:
                gateway.apply(load_cameras(settings.config))
            except InvalidCameraConfig as exc:
                log.error(
                    "cameras file not applied; the running cameras are kept",
                    extra={"error": exc.code, "detail": exc.message},
                )
    finally:
        for task in (publisher, connecting):
            if task is not None and not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        await gateway.stop()
        if gateway.producer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(gateway.producer.stop(), 0.3)
        gateway.metrics.close()
    return gateway


async def _either(*events: asyncio.Event, connecting: asyncio.Task[object]) -> None:
    """Until one of `events` is set, or `connecting` ends."""
    waits: list[asyncio.Future[object]] = [asyncio.create_task(e.wait()) for e in events]
    if not connecting.done():
        waits.append(connecting)
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in waits:
            if task is not connecting:
                task.cancel()


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return -1


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_cli(CamerasSettings, argv, required=["bootstrap"])
    configure_logging(settings.log_level, settings.log_format)
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    configure_tracing(settings, "tfstream-cameras")
    try:
        gateway = asyncio.run(run_gateway(settings))
    except TfstreamError as exc:
        print(f"error: [{exc.code}] {exc.message}", file=sys.stderr)
        return 1
    if gateway.abandoned:
        _exit_leaving_readers(0)
    return 0


def _exit_leaving_readers(code: int) -> None:
    """Exit now, without the interpreter's shutdown. A reader abandoned inside FFmpeg
    wakes when its call returns and runs Python again (PyAV's interrupt callback,
    the reader's own code) while that shutdown tears the interpreter down under it:
    the gateway then ended with SIGSEGV instead of 0 (seen once in the suite). By
    now the producer and the metrics are closed; only the logs need flushing."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
