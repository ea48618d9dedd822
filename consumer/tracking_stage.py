"""Tracking on the worker's Kafka path: cameras' states restored, applied, written back.

`consumer.tracking` moves a camera forward by a frame without I/O; this stage
gives it its three topics (docs/protocol.md, "Tracking"):

* `<prefix>.zones` (compacted, key = camera): read to its end before the
  worker joins its group, then followed (`CameraFeed`); a change applies from
  the camera's next frame, on every model;
* `<prefix>.state.<model>` (compacted, key = camera): when a request partition
  is assigned, the state partition of the same number is read from its beginning
  to its end offset; that partition's frames wait until it is done. On revoke,
  its cameras are forgotten, so a partition assigned again is read again;
* `<prefix>.events.<model>` (key = camera): each frame's events.

Per keyed frame, in the order the frames of its camera were fetched: the boxes
of a successful answer are tracked (`track_id` on each box), then the events are
written and acknowledged, then the state record (to the request's partition
number), and only then may the offset be committed. A worker that dies between
the two writes repeats the events with the same ids; one that dies after the
state but before the commit is handed frames the state covers, which change
nothing and emit nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from consumer import kafka_io
from consumer.ordering import Chains
from consumer.outbox import Outbox
from consumer.pipeline import Answer
from consumer.protocol import Headers, Topics
from consumer.settings import ConsumerSettings
from consumer.startup import until_ready
from consumer.tracking.cameras import Cameras
from consumer.tracking.config import CameraConfig, InvalidCameraConfig
from consumer.tracking.events import Position
from engines.errors import ServiceUnavailable

if TYPE_CHECKING:
    from consumer.records import Record

log = logging.getLogger(__name__)

#: Header a streamer or gateway may set: the frame's capture time, epoch milliseconds.
#: Without it the record's timestamp is the tracker's clock.
CAPTURE_MS = "capture-ms"
#: How long a restore read waits for one fetch.
RESTORE_FETCH_MS = 200


def capture_time_s(headers: Headers, timestamp_ms: int | None) -> float:
    for name, value in headers:
        if name == CAPTURE_MS and value:
            with contextlib.suppress(ValueError):
                return int(value) / 1000.0
    return (timestamp_ms or 0) / 1000.0


def state_topic_spec(topics: Topics, model: str, partitions: int) -> kafka_io.TopicSpec:
    return kafka_io.TopicSpec(topics.state(model), partitions, compacted=True)


@dataclass(frozen=True)
class TrackedAnswer(Answer):
    """An answer with `track_id` on its boxes, and what must be written (events, then
    the camera's state) before its request may be committed.

    `settled` must be called once the request's delivery has ended, written or given
    up (dead-lettered, abandoned): the camera's next state waits for this frame's
    events until then, since it counts them too."""

    writes: Callable[[], Awaitable[None]] | None = None
    settled: Callable[[], None] = lambda: None


class _StateWriter:
    """One camera's state records, at most one in flight: a state asked for while one is
    being written waits, and only the latest of those waiting is written; it covers the
    frames of the others (it was asked for after their events were acknowledged), so
    each of them is done when it is acknowledged. A camera with a backlog then costs
    one round trip per batch of frames, not per frame.

    A state of a frame at or before one already acknowledged (a frame's writes tried
    again after a later frame's state went through) is done without a send: writing
    it would take the camera's record back to before frames already committed."""

    def __init__(self, outbox: Outbox, topic: str, key: bytes, partition: int) -> None:
        self.outbox = outbox
        self.topic = topic
        self.key = key
        self.partition = partition
        self._latest: tuple[int, bytes] | None = None
        self._acked = -1
        self._waiting: list[asyncio.Future[None]] = []
        self._running: asyncio.Task[None] | None = None

    def write(self, offset: int, value: bytes) -> asyncio.Future[None]:
        """The state after the frame at `offset` of this camera's request partition."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._latest is None or offset >= self._latest[0]:
            self._latest = (offset, value)
        self._waiting.append(done)
        if self._running is None or self._running.done():
            self._running = asyncio.ensure_future(self._run())
        return done

    async def _run(self) -> None:
        while self._latest is not None:
            (offset, value), waiting = self._latest, self._waiting
            self._latest, self._waiting = None, []
            if offset > self._acked:
                try:
                    await self.outbox.send(
                        self.topic, value, self.key, (), partition=self.partition
                    )
                except BaseException as exc:  # each waiting frame fails (and is retried) alike
                    for future in waiting:
                        if not future.done():
                            future.set_exception(exc)
                    if isinstance(exc, asyncio.CancelledError):
                        raise
                    continue
                self._acked = offset
            for future in waiting:
                if not future.done():
                    future.set_result(None)


class TrackingStage:
    """The tracking of one worker, every model: see the module docstring."""

    def __init__(
        self,
        settings: ConsumerSettings,
        topics: Topics,
        outbox: Outbox,
        default: Callable[[str], bool],
        known: Callable[[str], bool] = lambda model: True,
    ) -> None:
        """default(model): whether a camera with no record of its own is tracked
        (`tracking` in the model's config.json); known(model): whether the model is in
        this worker's repository, so that its state topic exists (a worker serving every
        model is also assigned request topics of models it only answers with an error)."""
        self.settings = settings
        self.topics = topics
        self.outbox = outbox
        self._default = default
        self._known = known
        self._models: dict[str, Cameras] = {}
        self._config_records: dict[bytes, bytes | None] = {}
        self._restores: dict[tuple[str, int], asyncio.Task[None]] = {}
        self._assigned_at: dict[tuple[str, int], float] = {}
        self._partition_cameras: dict[tuple[str, int], set[str]] = {}
        self._applied: Chains[tuple[str, str], None] = Chains()
        self._written: Chains[tuple[str, str], None] = Chains()
        self._writers: dict[tuple[str, str], _StateWriter] = {}
        self._reader: AIOKafkaConsumer | None = None
        self._reader_lock = asyncio.Lock()

    # -- cameras --------------------------------------------------------------------

    def cameras(self, model: str) -> Cameras:
        found = self._models.get(model)
        if found is None:
            default = CameraConfig(camera="-") if self._default(model) else None
            found = self._models[model] = Cameras(default)
            for key, value in self._config_records.items():
                with contextlib.suppress(InvalidCameraConfig):
                    found.configure(key, value)
        return found

    def configure(self, key: bytes | None, value: bytes | None) -> None:
        """A `<prefix>.zones` record, for every model; a bad one is logged and skipped."""
        if key is None:
            return
        try:
            if value is not None:
                config = CameraConfig.from_record(value)
                if config.camera != key.decode():
                    raise InvalidCameraConfig(f"record keyed {key!r} configures {config.camera!r}")
            for cameras in self._models.values():
                cameras.configure(key, value)
        except (InvalidCameraConfig, UnicodeDecodeError) as exc:
            log.warning(
                "camera configuration refused", extra={"camera": repr(key), "error": str(exc)}
            )
            return
        self._config_records[key] = value
        log.info("camera configured", extra={"camera": key.decode(), "removed": value is None})

    # -- partitions -------------------------------------------------------------------

    def assigned(self, partitions: Iterable[TopicPartition]) -> None:
        """Start reading the state of newly assigned request partitions, all in one pass."""
        now = time.monotonic()
        fresh = []
        for tp in partitions:
            model = self.topics.model_of(tp.topic)
            if self.topics.is_request_topic(tp.topic) and self._known(model):
                self._assigned_at[(tp.topic, tp.partition)] = now
                fresh.append((tp.topic, tp.partition))
        if fresh:
            task = asyncio.get_running_loop().create_task(self._read_states(fresh))
            for where in fresh:
                self._restores[where] = task

    def revoked(self, partitions: Iterable[TopicPartition]) -> None:
        """Forget what revoked partitions' cameras held (their work is handed back). A
        restore still running is left to end: it may be shared with partitions kept,
        and a partition assigned again is read again, over what it left."""
        for tp in partitions:
            where = (tp.topic, tp.partition)
            self._restores.pop(where, None)
            self._assigned_at.pop(where, None)
            cameras = self._partition_cameras.pop(where, set())
            model = self.topics.model_of(tp.topic)
            if model in self._models:
                self._models[model].revoke(cameras)
            for camera in cameras:
                self._writers.pop((model, camera), None)

    def _writer(self, model: str, camera: str, partition: int) -> _StateWriter:
        writer = self._writers.get((model, camera))
        if writer is None or writer.partition != partition:
            topic = self.topics.state(model)
            writer = _StateWriter(self.outbox, topic, camera.encode(), partition)
            self._writers[(model, camera)] = writer
        return writer

    def _restore(self, topic: str, partition: int) -> asyncio.Task[None]:
        """The partition's restore; started here if no assignment started it (or it failed)."""
        task = self._restores.get((topic, partition))
        if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):
            task = asyncio.get_running_loop().create_task(self._read_states([(topic, partition)]))
            self._restores[(topic, partition)] = task
        return task

    async def _read_states(self, partitions: list[tuple[str, int]]) -> None:
        """Retried while the broker is away: the partitions' frames wait for it, since
        a camera started anew would count again what its state counted."""
        delay_s = 0.1
        while True:
            try:
                await self._read_states_once(partitions)
                return
            except (KafkaError, OSError, TimeoutError) as exc:
                log.warning(
                    "tracking state not read, retrying",
                    extra={"partitions": [f"{t}:{p}" for t, p in partitions], "error": repr(exc)},
                )
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, 5.0)

    async def _read_states_once(self, partitions: list[tuple[str, int]]) -> None:
        """Each state partition from its beginning to its end offset as it is now: the
        previous owner acknowledged every state record before committing its frames."""
        where = {
            TopicPartition(self.topics.state(self.topics.model_of(t)), p): (t, p)
            for t, p in partitions
        }
        counts = dict.fromkeys(partitions, 0)
        async with self._reader_lock:
            reader = await self.start()
            reader.assign(list(where))
            # Offsets asked for directly: an empty partition then costs no fetch at all.
            # aiokafka's offset look-ups wait for good on a partition that does not exist
            # (a state topic deleted): bounded, so that the wait is logged and retried.
            async with asyncio.timeout(self.settings.broker_timeout_ms / 1000):
                starts = await reader.beginning_offsets(list(where))
                ends = await reader.end_offsets(list(where))
            pending = [tp for tp in where if starts[tp] < ends[tp]]
            for tp in pending:
                reader.seek(tp, starts[tp])
            while pending:
                batch = await reader.getmany(*pending, timeout_ms=RESTORE_FETCH_MS)
                for tp, records in batch.items():
                    topic, partition = where[tp]
                    if (topic, partition) not in self._assigned_at:
                        continue  # revoked meanwhile: its cameras are not this worker's
                    cameras = self.cameras(self.topics.model_of(topic))
                    held = self._partition_cameras.setdefault((topic, partition), set())
                    for rec in records:
                        if rec.key is None or rec.offset >= ends[tp]:
                            continue
                        try:
                            camera = rec.key.decode()
                        except UnicodeDecodeError:  # no camera of ours wrote it
                            log.error(
                                "tracking state record skipped: its key is not UTF-8",
                                extra={
                                    "partition": f"{tp.topic}:{tp.partition}",
                                    "offset": rec.offset,
                                },
                            )
                            continue
                        cameras.restore(rec.key, rec.value)
                        held.add(camera)
                        counts[(topic, partition)] += 1
                pending = [tp for tp in pending if await reader.position(tp) < ends[tp]]
        now = time.monotonic()
        for topic, partition in partitions:
            seconds = now - self._assigned_at.get((topic, partition), now)
            log.info(
                "tracking state restored",
                extra={
                    "partition": f"{topic}:{partition}",
                    "records": counts[(topic, partition)],
                    "cameras": len(self._partition_cameras.get((topic, partition), ())),
                    "seconds": round(seconds, 4),
                },
            )

    async def start(self) -> AIOKafkaConsumer:
        """The reader of state partitions, started before the group is joined, so that
        a restore after an assignment costs no connection."""
        if self._reader is None:
            self._reader = await kafka_io.started(
                kafka_io.consumer(
                    self.settings, "tracking", group_id=None, enable_auto_commit=False
                )
            )
        return self._reader

    async def close(self) -> None:
        for task in self._restores.values():
            task.cancel()
        if self._reader is not None:
            with contextlib.suppress(KafkaError, OSError):
                await self._reader.stop()

    # -- frames ---------------------------------------------------------------------------

    def tracked(self, record: Record, model: str, answered: Awaitable[Answer]) -> Awaitable[Answer]:
        """The answer of `record` once tracked: a `TrackedAnswer` carrying the writes
        (events, then state) to finish before its offset is done. Called in fetch
        order, which is the order the frames of a camera are applied in."""
        if record.key is None:
            return answered
        try:
            camera = record.key.decode()
        except UnicodeDecodeError:
            return answered
        if self.cameras(model).untracked(camera):
            return answered  # no task, no place in an order: untracked frames pay nothing
        applied: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        before = self._applied.follow((model, camera), applied)
        position = Position(record.topic, record.partition, record.offset)
        return asyncio.ensure_future(
            self._track(model, camera, position, before, applied, answered, record)
        )

    async def _track(
        self,
        model: str,
        camera: str,
        pos: Position,
        before: asyncio.Future[None] | None,
        applied: asyncio.Future[None],
        answered: Awaitable[Answer],
        record: Record,
    ) -> Answer:
        try:
            answer = await answered
            # An error or an untracked camera changes no state: its answer goes out at
            # once, never behind the frames of its camera still being applied (a
            # request refused before it ran is answered ahead of those queued before it).
            data = answer.reply.data
            if answer.error is not None or data is None:
                return answer
            if self.cameras(model).untracked(camera):
                return answer  # no longer tracked here: no state to wait for
            if before is not None:
                await asyncio.wait([before])
            await self._restore(pos.topic, pos.partition)
            boxes = data["bounding-boxes"]
            outcome = self.cameras(model).apply(
                camera, pos, boxes, capture_time_s(record.headers, record.timestamp_ms)
            )
            if outcome.restore_error is not None:
                log.error(
                    "tracking state unreadable: the camera starts anew",
                    extra={"camera": camera, "error": outcome.restore_error.message},
                )
            if outcome.state_record is None and outcome.boxes is boxes:
                return answer  # not tracked: answered exactly as without tracking
            self._partition_cameras.setdefault((pos.topic, pos.partition), set()).add(camera)
            reply = replace(answer.reply, data={**data, "bounding-boxes": outcome.boxes})
            if outcome.state_record is None:  # a frame its state covers: nothing to write
                return TrackedAnswer(reply, answer.dead_letter)
            written: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            state_before = self._written.follow((model, camera), written)
            events = [e.to_record() for e in outcome.events]
            _, value = outcome.state_record

            def settled() -> None:
                if not written.done():
                    written.set_result(None)

            async def writes() -> None:
                """Tried again by the delivery while it fails: the events (the same
                ids again), then the state, queued behind the camera's earlier ones."""
                await asyncio.gather(
                    *(self.outbox.send(self.topics.events(model), v, k, ()) for k, v in events)
                )
                if state_before is not None:  # the camera's states are queued in order
                    await asyncio.wait([state_before])
                acked = self._writer(model, camera, pos.partition).write(pos.offset, value)
                settled()  # the next frame's state may queue behind this one now
                await acked

            return TrackedAnswer(reply, answer.dead_letter, writes, settled)
        finally:
            if not applied.done():
                applied.set_result(None)


class CameraFeed:
    """Follows `<prefix>.zones` into a `TrackingStage`: read to its end first
    (`catch_up`, before the worker takes partitions), then tailed (`loop`)."""

    def __init__(self, settings: ConsumerSettings, topics: Topics, stage: TrackingStage) -> None:
        self.settings = settings
        self.topics = topics
        self.stage = stage
        self._consumer: AIOKafkaConsumer | None = None
        self._partition = TopicPartition(topics.zones, 0)
        self._positioned = False

    async def catch_up(self, deadline_s: float) -> None:
        """Read to the end as it is now, tried again (going on from where the last try
        stopped) while the broker is away or the topic cannot be read, until
        `deadline_s` (`time.monotonic()`): a worker must not wait for good, unready
        and silent, before joining its group.

        Raises:
            ServiceUnavailable: not read to its end by `deadline_s` (the message
                names the topic); NotAuthorized...: a refusal.
        """
        await until_ready(
            "reading camera configurations", self._catch_up_once, self.settings, deadline_s
        )

    async def _catch_up_once(self) -> None:
        consumer = await self._started()
        tp = self._partition
        wait_s = self.settings.broker_timeout_ms / 1000
        try:
            # aiokafka's offset look-ups wait for good on a partition that does not exist.
            async with asyncio.timeout(wait_s):
                if not self._positioned:
                    consumer.seek(tp, (await consumer.beginning_offsets([tp]))[tp])
                    self._positioned = True
                end = (await consumer.end_offsets([tp]))[tp]
                while await consumer.position(tp) < end:
                    batch = await consumer.getmany(tp, timeout_ms=RESTORE_FETCH_MS)
                    self._feed(batch.get(tp, []))
        except TimeoutError as exc:
            raise ServiceUnavailable(
                f"{tp.topic} not read to its end within {wait_s:g}s (does it exist?)"
            ) from exc

    async def loop(self) -> None:
        """Tailed for good; a failed fetch is logged and asked again (`kafka_io.follow`)."""
        async for records in kafka_io.follow(await self._started(), "camera configurations"):
            self._feed(records)

    def _feed(self, records: list[Any]) -> None:
        for rec in records:
            self.stage.configure(rec.key, rec.value)

    async def _started(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            self._consumer = await kafka_io.started(
                kafka_io.consumer(self.settings, "cameras", group_id=None, enable_auto_commit=False)
            )
            self._consumer.assign([self._partition])
        return self._consumer

    async def close(self) -> None:
        if self._consumer is not None:
            with contextlib.suppress(KafkaError, OSError):
                await self._consumer.stop()
