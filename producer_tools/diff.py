"""`tfstream-diff`: what a candidate model says differently from the serving one.

Live: two answer streams on Kafka, usually the serving group's answer log
(`<prefix>.answers.<model>`) and a shadow's (`<prefix>.shadow.<name>.<model>`),
read outside any consumer group over a time window (`--since`/`--until`) or
until `--count` requests have an answer on both sides. The window is the
requests' time (the request record's timestamp, which both logs record), and
the answers are paired by the request's position (topic, partition, offset):
correlation ids are the clients' and may repeat (they are counted). For the
report page the frames are read back from the request topic at that position.

Offline: a folder of images through two model repositories, both in this
process (`consumer.offline`, imported only then: it loads TensorFlow), no
Kafka: the check to put in a model's CI, with `--min-agreement` as the gate.

The comparison itself is `producer_tools.diff_match`; the page, `diff_report`.
Exit status: 0, or 1 when the agreement, or the share of the frames the
baseline answered that the candidate answered too, is below `--min-agreement`;
2 for a usage or connection problem.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from pydantic import Field, model_validator

from consumer import kafka_io
from consumer.access import explain
from consumer.answer_log import LoggedAnswer
from consumer.protocol import epoch_ms
from consumer.settings import KafkaClientSettings
from consumer.startup import until_ready
from engines.errors import InvalidRequest, ServiceUnavailable, TfstreamError
from engines.logs import configure_tool_logging
from engines.settings import cli_config, parse_cli
from producer_tools.diff_match import (
    DEFAULT_MIN_IOU,
    DiffResult,
    FrameAnswer,
    compare,
    table,
)

log = logging.getLogger(__name__)

#: How long one fetch waits; the read ends at the end offsets taken at its start.
FETCH_MS = 500


class DiffSettings(KafkaClientSettings):
    """tfstream-diff: compare two answer streams box by box. Live: --baseline TOPIC
    --candidate TOPIC (an answer log and a shadow topic) over --since/--until or
    --count. Offline: --images DIR --baseline-repo A --candidate-repo B, both models
    run in this process, no Kafka. Prints per class and overall: boxes on each side,
    matched, only in one, mean IoU and confidence change of the matches, coverage (frames
    answered, failed, without an answer), error codes and latency of each side, the
    agreement (matched / union; a frame one side failed or missed counts the other's boxes
    as unmatched) and the share of the frames the baseline answered that the candidate
    answered too. Every option is also an environment variable TFSTREAM_<OPTION>."""

    model_config = cli_config("tfstream-diff")

    baseline: str = ""
    """Live: the baseline's topic, e.g. tfstream.answers.<model>."""
    candidate: str = ""
    """Live: the candidate's topic, e.g. tfstream.shadow.<name>.<model>."""
    since: str = ""
    """Live: requests sent from this time: ISO 8601 (UTC unless zoned), epoch ms, or a span
    back from now (90s, 15m, 2h, 1d). Default: the start of the topics."""
    until: str = ""
    """Live: requests sent up to this time (same forms). Default: now."""
    count: int = Field(default=0, ge=0)
    """Live: stop once this many requests have an answer on both sides (waiting up to
    --wait-s for them); the figures cover the requests up to the last of them, those
    answered by one side only included; 0: everything in the window."""
    wait_s: float = Field(default=60.0, gt=0)
    """Live, with --count: the longest wait for the answers."""

    images: Path | None = None
    """Offline: a folder of images, answered by both repositories' model in this process."""
    baseline_repo: Path | None = None
    """Offline: the baseline's model repository."""
    candidate_repo: Path | None = None
    """Offline: the candidate's model repository."""
    model: str = ""
    """Offline: the model to compare (default: the one model both repositories have)."""
    device: str = "auto"
    """Offline: TensorFlow device for both models: auto, cpu, GPU:0..."""

    min_iou: float = Field(default=DEFAULT_MIN_IOU, gt=0, le=1)
    """Two boxes of the same class match when their IoU is at least this."""
    as_json: bool = Field(
        default=False,
        alias="json",
        description="Print the comparison as JSON instead of the table.",
    )
    min_agreement: float | None = Field(default=None, ge=0, le=1)
    """Exit with status 1 when the agreement (matched / union of boxes; a frame one side
    failed or missed counts the other's boxes as unmatched) is below this, or the share
    of the frames the baseline answered that the candidate answered too."""
    report: Path | None = None
    """Write a page (index.html and the frames) into this folder: the frames where the two
    disagree most, baseline boxes solid, candidate boxes dashed."""
    report_frames: int = Field(default=12, ge=1)
    """How many frames the page shows."""

    @model_validator(mode="after")
    def _one_mode(self) -> DiffSettings:
        live = bool(self.baseline or self.candidate)
        offline = bool(self.images or self.baseline_repo or self.candidate_repo)
        if live == offline:
            raise ValueError(
                "give either --baseline TOPIC --candidate TOPIC (live) or --images DIR "
                "--baseline-repo A --candidate-repo B (offline)"
            )
        if live and not (self.baseline and self.candidate):
            raise ValueError("live: give both --baseline TOPIC and --candidate TOPIC")
        if offline and not (self.images and self.baseline_repo and self.candidate_repo):
            raise ValueError("offline: give --images DIR, --baseline-repo A and --candidate-repo B")
        if live and not self.bootstrap:
            raise ValueError("live: --bootstrap (or TFSTREAM_BOOTSTRAP) is required")
        parse_time(self.since)
        parse_time(self.until)
        return self

    @property
    def live(self) -> bool:
        return bool(self.baseline)


_SPAN = re.compile(r"([0-9]+(?:\.[0-9]+)?)(s|m|h|d)")
_SPAN_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_time(text: str, now_ms: int | None = None) -> int | None:
    """Epoch ms from '' (None), a span back from now, epoch ms, or ISO 8601.

    Raises:
        ValueError: anything else.
    """
    text = text.strip()
    if not text:
        return None
    now = int(time.time() * 1000) if now_ms is None else now_ms
    if match := _SPAN.fullmatch(text):
        return now - int(float(match.group(1)) * _SPAN_S[match.group(2)] * 1000)
    return epoch_ms(text, f"{text!r} is not a time: give ISO 8601, epoch ms or a span like 15m")


# -- live: reading two answer topics ---------------------------------------------------


async def read_answers(settings: DiffSettings) -> tuple[list[LoggedAnswer], list[LoggedAnswer]]:
    """Both topics' answers in the window; with --count, until that many pair up.

    Raises:
        NotAuthorized: Kafka refused the credentials.
        ServiceUnavailable: the broker cannot be reached (within --start-timeout-s).
        InvalidRequest: a topic does not exist.
    """
    since = parse_time(settings.since)
    until = parse_time(settings.until)

    consumer = await until_ready(
        "connecting",
        lambda: kafka_io.started(
            kafka_io.consumer(settings, "diff", group_id=None, enable_auto_commit=False)
        ),
        settings,
    )
    sides: dict[str, list[LoggedAnswer]] = {settings.baseline: [], settings.candidate: []}
    try:
        partitions = await _assigned(consumer, list(sides), settings)
        if since is None:
            await consumer.seek_to_beginning(*partitions)
        else:
            await kafka_io.seek_to_time(
                consumer, partitions, since, settings.broker_timeout_ms / 1000
            )
        ends = await consumer.end_offsets(partitions)
        deadline = time.monotonic() + settings.wait_s

        def paired() -> int:
            base, cand = sides[settings.baseline], sides[settings.candidate]
            return len({a.request.ident for a in base} & {a.request.ident for a in cand})

        while True:
            if settings.count:
                if paired() >= settings.count or time.monotonic() > deadline:
                    break
            elif await _at_end(consumer, ends):
                break
            batches = await consumer.getmany(timeout_ms=FETCH_MS)
            for tp, records in batches.items():
                for rec in records:
                    try:
                        answer = LoggedAnswer.from_json(rec.value or b"")
                    except InvalidRequest as exc:
                        log.warning(
                            "skipped a record", extra={"topic": tp.topic, "error": exc.message}
                        )
                        continue
                    if in_window(answer, rec.timestamp, since, until):
                        sides[tp.topic].append(answer)
    except KafkaError as exc:
        raise await explain(exc, settings) from exc
    finally:
        await consumer.stop()
    base, cand = sides[settings.baseline], sides[settings.candidate]
    if settings.count:
        return first_paired(base, cand, settings.count)
    return base, cand


def in_window(answer: LoggedAnswer, record_ms: int, since: int | None, until: int | None) -> bool:
    """Whether the answered request was sent within [since, until] (the answer record's
    own time where the log has no request time)."""
    sent = answer.request.timestamp_ms if answer.request.timestamp_ms is not None else record_ms
    return (since is None or sent >= since) and (until is None or sent <= until)


def first_paired(
    base: list[LoggedAnswer], cand: list[LoggedAnswer], count: int
) -> tuple[list[LoggedAnswer], list[LoggedAnswer]]:
    """The answers to the requests up to the `count`-th answered by both sides, in the
    requests' order: one-sided requests among them stay (they count against the
    candidate), later ones go."""
    on_base = {a.request.ident for a in base}
    on_cand = {a.request.ident for a in cand}
    sent: dict[str, tuple[int, str]] = {}
    for answer in (*base, *cand):
        r = answer.request
        sent.setdefault(r.ident, (r.timestamp_ms or answer.answered_ms, r.ident))
    chosen: set[str] = set()
    both = 0
    for ident in sorted(sent, key=sent.__getitem__):
        if both >= count:
            break
        chosen.add(ident)
        both += ident in on_base and ident in on_cand
    return (
        [a for a in base if a.request.ident in chosen],
        [a for a in cand if a.request.ident in chosen],
    )


async def _assigned(
    consumer: AIOKafkaConsumer, topics: list[str], settings: DiffSettings
) -> list[TopicPartition]:
    """Every partition of `topics`, assigned to `consumer` (outside any group).

    Raises:
        InvalidRequest: a topic does not exist.
    """
    existing = await consumer.topics()
    for topic in topics:
        if topic not in existing:
            raise InvalidRequest(f"topic '{topic}' does not exist")
    consumer.subscribe(topics)  # without a group: all their partitions
    deadline = time.monotonic() + settings.broker_timeout_ms / 1000
    while {tp.topic for tp in consumer.assignment()} != set(topics):
        if time.monotonic() > deadline:
            raise ServiceUnavailable(f"no partitions of {topics} were assigned in time")
        await asyncio.sleep(0.1)
    return sorted(consumer.assignment())


async def _at_end(consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> bool:
    """Whether every partition was read up to `ends` (the end offsets at the start)."""
    for tp, end in ends.items():
        if await consumer.position(tp) < end:
            return False
    return True


async def read_frames(settings: KafkaClientSettings, frames: list[FrameAnswer]) -> dict[str, bytes]:
    """The request records' images for `frames`, by ident; missing ones are left out
    (retention may have removed them: the page then draws on an empty canvas)."""
    wanted = {f.ident: f.request for f in frames if f.request is not None}
    if not wanted:
        return {}
    consumer = kafka_io.consumer(settings, "diff-frames", group_id=None, enable_auto_commit=False)
    out: dict[str, bytes] = {}
    try:
        await consumer.start()
        for ident, position in wanted.items():
            assert position is not None
            tp = TopicPartition(position.topic, position.partition)
            consumer.assign([tp])
            consumer.seek(tp, position.offset)
            batch = await consumer.getmany(tp, timeout_ms=5_000, max_records=1)
            for rec in batch.get(tp, []):
                if rec.offset == position.offset and rec.value:
                    out[ident] = rec.value
    except (KafkaError, OSError) as exc:
        log.warning("frames not read", extra={"error": repr(exc)})
    finally:
        await consumer.stop()
    return out


async def live_diff(settings: DiffSettings) -> tuple[DiffResult, dict[str, bytes]]:
    base, cand = await read_answers(settings)
    result = compare(
        (FrameAnswer.from_logged(a) for a in base),
        (FrameAnswer.from_logged(a) for a in cand),
        settings.baseline,
        settings.candidate,
        settings.min_iou,
        live=True,
    )
    images: dict[str, bytes] = {}
    if settings.report:
        shown = result.most_disagreeing(settings.report_frames)
        images = await read_frames(settings, [f.baseline for f in shown])
    return result, images


# -- offline: two repositories in this process -----------------------------------------


async def offline_diff(settings: DiffSettings) -> tuple[DiffResult, dict[str, bytes]]:
    # Imported here: it loads the engines (TensorFlow), which a live diff never needs.
    from consumer.offline import answer_images, common_model, image_files

    assert settings.images and settings.baseline_repo and settings.candidate_repo
    images = image_files(settings.images)
    model = common_model(settings.baseline_repo, settings.candidate_repo, settings.model or None)
    sides = []
    for repo in (settings.baseline_repo, settings.candidate_repo):
        answers = await answer_images(repo, model, images, settings.device)
        sides.append(
            [
                FrameAnswer(
                    ident=a.name,
                    boxes=list((a.reply.data or {}).get("bounding-boxes") or []),
                    error=a.reply.error.code if a.reply.error else None,
                    latency_ms=a.latency_ms,
                    width=int((a.reply.data or {}).get("width") or 0),
                    height=int((a.reply.data or {}).get("height") or 0),
                    name=a.name,
                )
                for a in answers
            ]
        )
    result = compare(
        sides[0],
        sides[1],
        f"{settings.baseline_repo}/{model}",
        f"{settings.candidate_repo}/{model}",
        settings.min_iou,
    )
    shown = result.most_disagreeing(settings.report_frames) if settings.report else []
    return result, {
        f.baseline.ident: (settings.images / f.baseline.ident).read_bytes() for f in shown
    }


async def run_diff(settings: DiffSettings) -> tuple[DiffResult, dict[str, bytes]]:
    return await (live_diff(settings) if settings.live else offline_diff(settings))


def main(argv: Sequence[str] | None = None) -> int:
    configure_tool_logging()
    settings = parse_cli(DiffSettings, argv)
    try:
        result, images = asyncio.run(run_diff(settings))
    except TfstreamError as exc:
        print(f"error: [{exc.code}] {exc.message}", file=sys.stderr)
        return 2
    print(result.to_json(settings.report_frames) if settings.as_json else table(result), flush=True)
    if settings.report:
        from producer_tools.diff_report import write_report

        page = write_report(settings.report, result, images, settings.report_frames)
        print(f"report written to {page}", file=sys.stderr if settings.as_json else sys.stdout)
    failed = result.gate(settings.min_agreement) if settings.min_agreement is not None else []
    for reason in failed:
        print(reason, file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
