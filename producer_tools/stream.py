"""`tfstream-stream`: feed a camera's frames to a model, the way a camera gateway would.

Frames are keyed by the camera id (one camera stays in one partition, so its
frames are answered in order), carry no `reply-to` (answers land on
`<prefix>.results.<model>`, read them with `tfstream-results`), are paced at
`--fps`, and each carries `deadline-ms` = send time + a budget (two frame
intervals unless `--deadline-ms` says otherwise). A frame the workers cannot
start within its budget is answered `deadline_exceeded` and not run: a live
stream that falls behind drops old frames instead of queueing them forever.

The correlation id is `<camera>:<frame number>:<send time, epoch ms>`, so a
results reader can compute each frame's latency from the answer alone.

    tfstream-stream --bootstrap localhost:9092 --model shapes_tf2 --camera gate-1 \
        --source /dev/video0 --fps 5
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TextIO

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from pydantic import Field

from consumer import kafka_io
from consumer.protocol import Request, Topics, with_trace
from consumer.settings import KafkaClientSettings
from consumer.startup import until_ready
from engines.errors import TfstreamError
from engines.logs import configure_tool_logging
from engines.settings import cli_config, parse_cli
from producer_tools.model_topic import wait_for_model_topic
from producer_tools.sources import Frame, frame_stream, open_source

log = logging.getLogger(__name__)


class StreamSettings(KafkaClientSettings):
    """tfstream-stream: send a camera's frames (from a video, an image folder or a camera
    device) to a model's request topic, keyed by camera id, paced at --fps, each with a
    deadline; answers go to <prefix>.results.<model> (see tfstream-results). Every option
    is also an environment variable TFSTREAM_<OPTION>."""

    model_config = cli_config("tfstream-stream")

    model: str
    """The model to ask."""
    camera: str
    """The camera id: the Kafka key of every frame, and the start of its correlation id."""
    source: str
    """A video file, an image folder, a camera device (an index such as 0, or /dev/video0),
    or a network camera (rtsp://, rtsps://, http(s):// MJPEG or HLS; reconnected when it
    drops, newest frame sent)."""
    fps: float = Field(default=5.0, gt=0)
    """Frames sent per second."""
    count: int = Field(default=0, ge=0)
    """Frames to send; 0: one pass over a file source, until stopped for a camera."""
    loop: bool = False
    """Start a video or folder again at its end (until --count, or until stopped)."""
    deadline_ms: float = Field(default=0, ge=0)
    """A frame's budget: it must start running within this many ms of being sent or it
    is answered deadline_exceeded. 0: two frame intervals (2000 / fps)."""
    confidence: float | None = Field(default=None, ge=0, le=100)
    """Minimum box confidence in percent (default: the model's config.json)."""
    predictions: int | None = Field(default=None, ge=0)
    """Most boxes per frame (default: the model's config.json)."""
    jpeg_quality: int = Field(default=90, ge=1, le=100)
    """JPEG quality of video and camera frames."""

    @property
    def budget_ms(self) -> float:
        return self.deadline_ms or 2000.0 / self.fps


@dataclass
class StreamSummary:
    sent: int = 0
    failed: int = 0
    """Frames the broker did not accept."""
    late: int = 0
    """Frames sent more than one frame interval behind their schedule."""
    duration_s: float = 0.0

    def line(self, settings: StreamSettings, topic: str) -> str:
        fps = self.sent / self.duration_s if self.duration_s > 0 else 0.0
        return (
            f"camera {settings.camera}: sent {self.sent} frames to {topic} in "
            f"{self.duration_s:.1f} s ({fps:.1f} fps), {self.failed} failed, {self.late} late; "
            f"answers on {Topics(settings.topic_prefix).results(settings.model)}"
        )


def correlation_id(camera: str, index: int, sent_ms: int) -> str:
    return f"{camera}:{index}:{sent_ms}"


def parse_correlation_id(value: str | None) -> tuple[str, int, int] | None:
    """(camera, frame number, send time ms) of a tfstream-stream correlation id, else None."""
    parts = (value or "").rsplit(":", 2)
    if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
        return None
    return parts[0], int(parts[1]), int(parts[2])


class FrameSender:
    """The one send path of a camera's frames, `tfstream-stream`'s and `tfstream-cameras`':
    keyed by camera id, correlation id `<camera>:<n>:<send ms>`, a deadline of send time
    + budget, the trace context of the current span. A frame the broker refuses, at once
    or in its acknowledgement, is counted in `failed` and logged, never retried (a newer
    frame is coming)."""

    def __init__(
        self,
        producer: AIOKafkaProducer,
        topic: str,
        model: str,
        camera: str,
        budget_ms: float,
        *,
        conflate: bool = False,
        confidence: float | None = None,
        predictions: int | None = None,
    ) -> None:
        self.producer = producer
        self.topic = topic
        self.model = model
        self.camera = camera
        self.key = camera.encode()
        self.budget_ms = budget_ms
        self.conflate = conflate
        self.confidence = confidence
        self.predictions = predictions
        self.failed = 0
        self._acks: set[asyncio.Future[object]] = set()

    async def send(self, index: int, image: bytes, image_name: str, sent_ms: int) -> bool:
        """Hand frame `index` to the producer; False when it refused it at once."""
        request = Request(
            model=self.model,
            correlation_id=correlation_id(self.camera, index, sent_ms),
            image=image,
            key=self.key,
            deadline_ms=int(sent_ms + self.budget_ms),
            confidence=self.confidence,
            predictions=self.predictions,
            image_name=image_name,
            content_type="image/jpeg",
            conflate=self.conflate,
        )
        try:
            ack = await self.producer.send(
                self.topic,
                image,
                key=self.key,
                headers=with_trace(request.headers()),
                timestamp_ms=sent_ms,
            )
        except KafkaError as exc:
            self.failed += 1
            log.warning(
                "frame not sent",
                extra={"camera": self.camera, "frame": image_name, "error": repr(exc)},
            )
            return False
        self._acks.add(ack)
        ack.add_done_callback(self._settled)
        return True

    def _settled(self, ack: asyncio.Future[object]) -> None:
        self._acks.discard(ack)
        if ack.cancelled() or ack.exception() is not None:
            self.failed += 1

    async def settled(self) -> None:
        """Wait until the broker acknowledged (or refused) every frame handed over."""
        if self._acks:
            await asyncio.gather(*self._acks, return_exceptions=True)


async def run_stream(
    settings: StreamSettings,
    clock: Callable[[], float] = time.time,
    progress: TextIO | None = sys.stderr,
) -> StreamSummary:
    """Send the frames; return once the broker acknowledged (or refused) every one.

    `clock` gives the epoch seconds that stamp frames and their deadlines: a
    camera whose clock is behind sends frames that are already stale.

    Raises:
        SourceError: the source cannot be read.
        ModelNotFound: no worker created the model's request topic within
            `--start-timeout-s`.
        NotAuthorized: Kafka refused the credentials, or Write on the request topic.
        ServiceUnavailable: the broker cannot be reached within `--start-timeout-s`.
    """
    source = open_source(settings.source, settings.jpeg_quality, settings.max_record_image_bytes())
    deadline = time.monotonic() + settings.start_timeout_s
    topics = Topics(settings.topic_prefix)
    topic = topics.requests(settings.model)
    try:
        producer = await until_ready(
            "connecting",
            lambda: kafka_io.started(kafka_io.producer(settings, "stream")),
            settings,
            deadline,
        )
    except TfstreamError:
        source.close()
        raise

    async def topic_names() -> set[str]:
        return set((await producer.client.fetch_all_metadata()).topics())

    summary = StreamSummary()
    sender = FrameSender(
        producer,
        topic,
        settings.model,
        settings.camera,
        settings.budget_ms,
        confidence=settings.confidence,
        predictions=settings.predictions,
    )
    try:
        await wait_for_model_topic(topic_names, topics, settings.model, settings, deadline)
        loop = asyncio.get_running_loop()
        frames = frame_stream(source, settings.count, loop=settings.loop or source.live)
        interval_s = 1.0 / settings.fps
        started = loop.time()
        last_report = started
        index = 0
        while True:
            due = started + index * interval_s
            if due > loop.time():
                await asyncio.sleep(due - loop.time())
            frame: Frame | None = (
                await asyncio.to_thread(next, frames, None)
                if source.blocking
                else next(frames, None)
            )
            if frame is None:
                break
            now = loop.time()
            if now - due > interval_s:
                summary.late += 1
            await sender.send(index, frame.data, frame.name, int(clock() * 1000))
            summary.sent += 1
            index += 1
            if progress is not None and now - last_report >= 5:
                last_report = now
                progress.write(f"camera {settings.camera}: {summary.sent} frames sent\n")
                progress.flush()
        await sender.settled()
        summary.failed = sender.failed
        summary.duration_s = loop.time() - started
        return summary
    finally:
        source.close()
        await producer.stop()


def main(argv: Sequence[str] | None = None) -> int:
    configure_tool_logging()
    settings = parse_cli(StreamSettings, argv, required=["bootstrap"])
    try:
        summary = asyncio.run(run_stream(settings))
    except TfstreamError as exc:
        print(f"error: [{exc.code}] {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    print(
        summary.line(settings, Topics(settings.topic_prefix).requests(settings.model)), flush=True
    )
    return 1 if summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())
