"""`tfstream-results`: follow a model's results topic, one line per answered frame.

Answers to requests without `reply-to` (camera streams) land on
`<prefix>.results.<model>`, keyed like their requests (by camera). This reads
every partition outside any consumer group, so it never takes answers away
from another reader, and prints each: camera key, correlation id, number of
boxes and their labels, or the error code; plus the latency when the
correlation id carries the send time (`tfstream-stream`'s ids do), computed
against the answer record's timestamp.

    tfstream-results --bootstrap localhost:9092 --model shapes_tf2 --camera gate-1
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, TextIO

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from pydantic import Field

from consumer import kafka_io
from consumer.access import explain
from consumer.protocol import Reply, Topics
from consumer.settings import KafkaClientSettings
from consumer.startup import until_ready
from engines.errors import InvalidRequest, TfstreamError
from engines.logs import configure_tool_logging
from engines.settings import cli_config, parse_cli
from producer_tools.stream import parse_correlation_id

log = logging.getLogger(__name__)


class ResultsSettings(KafkaClientSettings):
    """tfstream-results: print the answers that land on <prefix>.results.<model> (camera
    streams), one line per frame. Every option is also an environment variable
    TFSTREAM_<OPTION>."""

    model_config = cli_config("tfstream-results")

    model: str
    """The model whose results topic to follow."""
    camera: str = ""
    """Only this camera's answers (the record key); empty: every camera."""
    from_beginning: bool = False
    """Start at the oldest answer kept by the broker instead of the newest."""
    count: int = Field(default=0, ge=0)
    """Stop after this many lines; 0: follow until stopped."""
    idle_timeout_s: float = Field(default=0, ge=0)
    """Stop after this many seconds without a new answer; 0: never."""
    output: Literal["text", "json"] = "text"
    """'text' for people, 'json' for one JSON object per line."""
    events: bool = False
    """Follow <prefix>.events.<model> instead: each line crossing and zone enter, leave
    or dwell of tracked cameras (docs/tracking.md), one line per event."""


@dataclass(frozen=True)
class ResultLine:
    camera: str | None
    correlation_id: str | None
    success: bool
    boxes: int
    labels: list[str]
    error: str | None
    """The error code of a failed frame."""
    latency_ms: float | None
    """Answer record time minus the send time found in the correlation id."""
    worker: str
    partition: int
    offset: int
    track_ids: list[int | None] = field(default_factory=list)
    """Each box's track ID when its camera is tracked (None: not confirmed yet)."""

    def text(self) -> str:
        parts = [f"camera={self.camera or '-'}", f"id={self.correlation_id or '-'}"]
        if self.success:
            parts += [f"boxes={self.boxes}", f"labels=[{', '.join(self.labels)}]"]
            if any(t is not None for t in self.track_ids):
                ids = ", ".join("-" if t is None else str(t) for t in self.track_ids)
                parts.append(f"tracks=[{ids}]")
        else:
            parts.append(f"error={self.error}")
        parts.append(
            f"latency_ms={self.latency_ms:.1f}" if self.latency_ms is not None else "latency_ms=-"
        )
        return " ".join(parts)

    def json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))


def describe(record: Any) -> ResultLine | None:
    """A results record as a line; None for a record that is not a reply."""
    try:
        reply = Reply.from_json(record.value or b"")
    except InvalidRequest:
        return None
    boxes = (reply.data or {}).get("bounding-boxes") or [] if reply.success else []
    parsed = parse_correlation_id(reply.correlation_id)
    latency = (
        float(record.timestamp - parsed[2]) if parsed is not None and record.timestamp else None
    )
    return ResultLine(
        camera=record.key.decode("utf-8", "replace") if record.key is not None else None,
        correlation_id=reply.correlation_id,
        success=reply.success,
        boxes=len(boxes),
        labels=[str(b.get("ObjectClassName")) for b in boxes],
        error=None if reply.error is None else reply.error.code,
        latency_ms=latency,
        worker=reply.worker,
        partition=record.partition,
        offset=record.offset,
        track_ids=[b.get("track_id") for b in boxes] if any("track_id" in b for b in boxes) else [],
    )


@dataclass(frozen=True)
class EventLine:
    """A record of <prefix>.events.<model> (docs/tracking.md, "Event record")."""

    event: dict[str, Any]

    def text(self) -> str:
        e = self.event
        stay = f" stay_s={e['dwell_s']:.1f}" if e.get("dwell_s") is not None else ""
        return (
            f"camera={e.get('camera')} {e.get('kind')} {e.get('target')} "
            f"class={e.get('class')} track={e.get('track_id')} "
            f"offset={(e.get('position') or {}).get('offset')} id={e.get('id')}{stay}"
        )

    def json(self) -> str:
        return json.dumps(self.event, separators=(",", ":"))


def describe_event(record: Any) -> EventLine | None:
    """An events record as a line; None for a record that is not an event."""
    try:
        event = json.loads(record.value or b"")
    except ValueError:
        return None
    return EventLine(event) if isinstance(event, dict) and "kind" in event else None


async def follow(
    settings: ResultsSettings, out: TextIO = sys.stdout, ready: asyncio.Event | None = None
) -> int:
    """Print answers until --count lines, --idle-timeout-s of silence, or cancellation.

    `ready` is set once the reader is positioned (after that, no new answer is
    missed even without --from-beginning). Returns the number of lines printed.

    Raises:
        NotAuthorized: Kafka refused the credentials.
        ServiceUnavailable: the broker cannot be reached.
    """
    topics = Topics(settings.topic_prefix)
    topic = topics.events(settings.model) if settings.events else topics.results(settings.model)
    describe_record = describe_event if settings.events else describe

    async def connect() -> AIOKafkaConsumer:
        """One attempt, retried while the brokers are not there yet (`until_ready`)."""
        consumer = kafka_io.consumer(
            settings,
            "results",
            group_id=None,
            auto_offset_reset="earliest" if settings.from_beginning else "latest",
        )
        try:
            return await kafka_io.started(consumer)
        except (KafkaError, OSError) as exc:
            raise await explain(exc, settings) from exc

    consumer = await until_ready("connecting", connect, settings)
    printed = 0
    try:
        # Without a group, aiokafka assigns every partition of a subscribed topic to us,
        # and picks the topic up when a worker creates it later.
        consumer.subscribe([topic])
        partitions = await _assigned(consumer, topic, settings.idle_timeout_s)
        if not partitions:
            return 0
        for tp in partitions:  # resolve the positions now, not at the first fetch
            await consumer.position(tp)
        if ready is not None:
            ready.set()
        camera = settings.camera.encode() if settings.camera else None
        last_seen = time.monotonic()
        while True:
            batches = await consumer.getmany(timeout_ms=200)
            if batches:
                last_seen = time.monotonic()
            elif (
                settings.idle_timeout_s and time.monotonic() - last_seen >= settings.idle_timeout_s
            ):
                return printed
            for records in batches.values():
                for record in records:
                    if camera is not None and record.key != camera:
                        continue
                    line = describe_record(record)
                    if line is None:
                        continue
                    out.write((line.json() if settings.output == "json" else line.text()) + "\n")
                    out.flush()
                    printed += 1
                    if settings.count and printed >= settings.count:
                        return printed
    finally:
        with contextlib.suppress(KafkaError, OSError):  # the broker may be gone
            await consumer.stop()


async def _assigned(consumer: Any, topic: str, give_up_s: float) -> list[TopicPartition]:
    """Wait until the topic's partitions are assigned (a worker may not have created it
    yet); [] after `give_up_s` (0: wait forever)."""
    started = time.monotonic()
    warned = False
    while True:
        partitions = sorted(consumer.assignment(), key=lambda tp: tp.partition)
        if partitions:
            return partitions
        if not warned and time.monotonic() - started > 3:
            print(
                f"waiting for {topic} to exist (no worker has served this model yet)",
                file=sys.stderr,
            )
            warned = True
        if give_up_s and time.monotonic() - started >= give_up_s:
            return []
        await asyncio.sleep(0.05)


def main(argv: Sequence[str] | None = None) -> int:
    configure_tool_logging()
    settings = parse_cli(ResultsSettings, argv, required=["bootstrap"])
    try:
        asyncio.run(follow(settings))
    except TfstreamError as exc:
        print(f"error: [{exc.code}] {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
