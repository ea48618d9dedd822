"""`tfstream-replay`: push a folder of images or a video's frames at a model and
measure what comes back.

Two ways to offer load, as every load generator must choose:

- `--rate R` (open loop): request i is due at start + i/R whatever the answers
  do, so a slow service shows up as growing latency, not as a politely lower
  offered rate. `--concurrency` still caps what is in flight (protecting the
  client); a send held back by the cap is late, and the lag is reported.
- `--max` (closed loop): keep `--concurrency` requests in flight; throughput is
  what the service sustains.

Answers come back through `DetectClient` (one reply topic for the run). Every
request ends as exactly one of: a successful answer, an error answer (by
code), a timeout; so `answered + errors + timeouts == sent`.

    tfstream-replay --bootstrap localhost:9092 --model shapes_tf2 --source images/ \
        --rate 20 --count 600 --report run.json --plot run.png
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal, TextIO

from pydantic import Field, model_validator

from consumer.protocol import Timing
from consumer.settings import KafkaClientSettings
from engines.errors import RequestTimeout, TfstreamError
from engines.logs import configure_tool_logging
from engines.settings import cli_config, parse_cli
from producer_tools.client import DetectClient
from producer_tools.model_topic import wait_for_model_topic
from producer_tools.report import OK, TIMEOUT, Outcome, RunReport
from producer_tools.sources import Frame, FrameSource, frame_stream, open_source

log = logging.getLogger(__name__)


class ReplaySettings(KafkaClientSettings):
    """tfstream-replay: send a folder of images or a video's frames to a model's request
    topic at a fixed rate (--rate) or as fast as answers allow (--max), and report
    throughput, latency percentiles, errors and batch sizes. Every option is also an
    environment variable TFSTREAM_<OPTION>."""

    model_config = cli_config("tfstream-replay")

    model: str
    """The model to ask."""
    source: str
    """An image folder (its images in name order) or a video file (frames sent as JPEG)."""
    rate: float = Field(default=0, ge=0)
    """Open loop: send this many requests per second, on schedule."""
    max: bool = False
    """Closed loop: keep --concurrency requests in flight, as fast as answers allow."""
    concurrency: int = Field(default=16, ge=1)
    """Most requests in flight at once."""
    count: int = Field(default=0, ge=0)
    """Requests to send; the source is looped to reach it. 0: one pass over the source
    (with --duration-s: as many as fit in that time)."""
    duration_s: float = Field(default=0, ge=0)
    """Stop sending after this many seconds (0: no time limit)."""
    warmup: int = Field(default=0, ge=0)
    """Requests sent and awaited before the measurement starts, not counted."""
    key_by: Literal["none", "source"] = "none"
    """'source': the file name (or video name) is the Kafka key."""
    answer_timeout_s: float = Field(default=30.0, gt=0)
    """Longest wait for one answer; a request without an answer by then counts as a timeout."""
    confidence: float | None = Field(default=None, ge=0, le=100)
    """Minimum box confidence in percent (default: the model's config.json)."""
    predictions: int | None = Field(default=None, ge=0)
    """Most boxes per image (default: the model's config.json)."""
    report: Path | None = None
    """Write the JSON report here."""
    plot: Path | None = None
    """Draw latency over time and its histogram into this PNG."""
    progress: bool = True
    """Show progress on stderr (a live line on a terminal, a line every 5 s otherwise)."""

    @model_validator(mode="after")
    def _one_mode(self) -> ReplaySettings:
        if bool(self.rate) == self.max:
            raise ValueError("give exactly one of --rate R or --max")
        return self


class Progress:
    """The live status on stderr: a \\r-line on a terminal, a plain line every 5 s otherwise."""

    def __init__(self, stream: TextIO | None, total: int, duration_s: float) -> None:
        self.stream = stream
        self.total = total
        self.duration_s = duration_s
        self.tty = bool(stream is not None and stream.isatty())
        self.sent = self.answered = self.errors = self.timeouts = 0
        self.started = time.monotonic()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.stream is not None:
            self._task = asyncio.create_task(self._loop(), name="progress")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._print(final=True)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(0.25 if self.tty else 5.0)
            self._print()

    def line(self) -> str:
        elapsed = time.monotonic() - self.started
        if self.total:
            fraction = min(1.0, self.sent / self.total)
        elif self.duration_s:
            fraction = min(1.0, elapsed / self.duration_s)
        else:
            fraction = 0.0
        bar = "#" * int(30 * fraction) + "." * (30 - int(30 * fraction))
        rate = self.answered / elapsed if elapsed > 0 else 0.0
        inflight = self.sent - self.answered - self.errors - self.timeouts
        return (
            f"[{bar}] {elapsed:6.1f}s sent {self.sent} answered {self.answered} "
            f"errors {self.errors} timeouts {self.timeouts} in flight {inflight} {rate:.1f}/s"
        )

    def _print(self, final: bool = False) -> None:
        assert self.stream is not None
        if self.tty:
            self.stream.write("\r" + self.line() + ("\n" if final else ""))
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()

    def count(self, code: str) -> None:
        if code == OK:
            self.answered += 1
        elif code == TIMEOUT:
            self.timeouts += 1
        else:
            self.errors += 1


async def _next_frame(frames: Iterator[Frame], source: FrameSource) -> Frame | None:
    if source.blocking:  # video decoding / camera waits stay off the event loop
        return await asyncio.to_thread(next, frames, None)
    return next(frames, None)


async def run_replay(
    settings: ReplaySettings,
    client: DetectClient | None = None,
    progress: TextIO | None = sys.stderr,
) -> RunReport:
    """Run the replay with `client` (a new one on `settings` if None) and return its report.

    Raises:
        SourceError: the source cannot be read.
        ModelNotFound: no worker created the model's request topic within
            `--start-timeout-s`.
        NotAuthorized: Kafka refused the credentials, or Write on the request topic.
        ServiceUnavailable: the broker cannot be reached within `--start-timeout-s`.
    """
    source = open_source(settings.source)
    deadline = time.monotonic() + settings.start_timeout_s
    own = client is None
    client = client or DetectClient(settings, timeout_s=settings.answer_timeout_s)
    started = not own
    try:
        if own:
            await client.start(deadline)
            started = True
        await wait_for_model_topic(
            client.consumer.topics, client.topics, settings.model, settings, deadline
        )
        if settings.warmup:
            warm = [(f.name, f.data) for f in frame_stream(source, settings.warmup)]
            await client.detect_many(
                settings.model,
                warm,
                concurrency=settings.concurrency,
                timeout_s=settings.answer_timeout_s,
            )
        duplicates_before = client.stats.duplicates
        report = await _measure(settings, client, source, progress)
        report.duplicates = client.stats.duplicates - duplicates_before
        return report
    finally:
        source.close()
        if own and started:
            await client.stop()


async def _measure(
    settings: ReplaySettings,
    client: DetectClient,
    source: FrameSource,
    progress_stream: TextIO | None,
) -> RunReport:
    loop = asyncio.get_running_loop()
    count = settings.count
    if count or not settings.duration_s:
        frames = frame_stream(source, count, loop=True)  # count 0: one pass
    else:
        frames = _endless(source)  # as many as fit in --duration-s
    gate = asyncio.Semaphore(settings.concurrency)
    outcomes: list[Outcome] = []
    lag_ms: list[float] = []
    pending: set[asyncio.Task[None]] = set()
    total = count or (0 if settings.duration_s else source.size or 0)
    progress = Progress(progress_stream if settings.progress else None, total, settings.duration_s)
    started = loop.time()
    last_done = started

    async def one(frame: Frame, sent_at: float) -> None:
        nonlocal last_done
        key = frame.source.encode() if settings.key_by == "source" else None
        batch, worker, boxes, timing = 0, "", -1, Timing()
        try:
            reply = await client.detect(
                settings.model,
                frame.data,
                image_name=frame.name,
                key=key,
                timeout_s=settings.answer_timeout_s,
                confidence=settings.confidence,
                predictions=settings.predictions,
            )
            code = OK if reply.error is None else reply.error.code
            worker = reply.worker
            if reply.error is None:
                batch, timing = reply.timing.batch_size, reply.timing
                boxes = len((reply.data or {}).get("bounding-boxes") or [])
        except RequestTimeout:
            code = TIMEOUT
        except TfstreamError as exc:  # the send failed (broker away): an error of its own
            code = exc.code
        finally:
            gate.release()
        now = loop.time()
        last_done = max(last_done, now)
        outcomes.append(
            Outcome(
                sent_at - started,
                (now - sent_at) * 1000,
                code,
                batch,
                worker,
                frame.name,
                boxes,
                timing.queue_ms,
                timing.decode_ms,
                timing.inference_ms,
            )
        )
        progress.count(code)

    progress.start()
    try:
        index = 0
        while True:
            if settings.duration_s and loop.time() - started >= settings.duration_s:
                break
            frame = await _next_frame(frames, source)
            if frame is None:
                break
            due = started + index / settings.rate if settings.rate else 0.0
            if settings.rate and due > loop.time():
                await asyncio.sleep(due - loop.time())
            await gate.acquire()
            sent_at = loop.time()
            if settings.rate:
                lag_ms.append(max(0.0, sent_at - due) * 1000)
            task = asyncio.create_task(one(frame, sent_at))
            pending.add(task)
            task.add_done_callback(pending.discard)
            progress.sent += 1
            index += 1
        if pending:
            await asyncio.gather(*pending)
    finally:
        for task in pending:
            task.cancel()
        await progress.stop()
    outcomes.sort(key=lambda o: o.sent_s)
    return RunReport(
        outcomes,
        duration_s=last_done - started,
        settings=_describe(settings),
        schedule_lag_ms=lag_ms,
    )


def _endless(source: FrameSource) -> Iterator[Frame]:
    """--duration-s without --count: loop the source until the time is up."""
    while True:
        produced = 0
        for frame in frame_stream(source, 0):
            produced += 1
            yield frame
        if not produced or source.live:
            return


def _describe(settings: ReplaySettings) -> dict[str, object]:
    return {
        "model": settings.model,
        "source": settings.source,
        "mode": "max" if settings.max else "rate",
        "rate": settings.rate or None,
        "concurrency": settings.concurrency,
        "count": settings.count,
        "duration_s": settings.duration_s,
        "key_by": settings.key_by,
        "timeout_s": settings.answer_timeout_s,
        "topic_prefix": settings.topic_prefix,
        "title": f"{settings.model} from {Path(settings.source).name}: "
        + (
            f"--max, {settings.concurrency} in flight"
            if settings.max
            else f"--rate {settings.rate:g}/s"
        ),
    }


def main(argv: Sequence[str] | None = None) -> int:
    configure_tool_logging()
    settings = parse_cli(ReplaySettings, argv, required=["bootstrap"])
    try:
        report = asyncio.run(run_replay(settings))
    except TfstreamError as exc:
        print(f"error: [{exc.code}] {exc.message}", file=sys.stderr)
        return 1
    print(report.summary(), flush=True)
    if settings.report:
        report.write_json(settings.report)
        print(f"report written to {settings.report}")
    if settings.plot:
        report.plot(settings.plot)
        print(f"plot written to {settings.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
