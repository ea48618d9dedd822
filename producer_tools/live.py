"""Live view of camera streams: each camera's latest frame joined with its answer.

Answers carry no pixels, so the frames come from the request topics: one
reader, outside any consumer group (it takes nothing away from the workers or
from `tfstream-results`), follows every `<prefix>.requests.*`,
`<prefix>.results.*` and `<prefix>.shadow.*` topic from their end. A request without `reply-to` (a
camera frame; request/reply calls answer elsewhere) is kept, per camera key,
until its answer arrives with the same `correlation-id`; the answer then
becomes the camera's view. Joining by correlation id, not by key and order,
stays right when answers come out of order (errors go ahead of queued frames)
or twice (a redelivery after a rebalance: the second is ignored).

`tfstream-cameras` publishes each camera's own state (connected, reconnecting
and why, fps in and out) on `<prefix>.cameras`; the reader follows it too and
shows it with the camera, even one that never connected.

A shadow group running for the model (`tfstream-consumer --shadow NAME`)
answers the same frames on `<prefix>.shadow.NAME.<model>`: its answer to the
frame on show is drawn dashed over it, with its own latency (request record
to shadow answer). Shadow answers wait, a few per camera, for their frame's
serving answer, as early answers do.

A tracked camera (docs/tracking.md) also shows its zones and lines (from the
compacted `<prefix>.zones`, read from its beginning) and the counts of the
events seen on `<prefix>.events.<model>` since the page started, each event
once; its boxes carry `track_id`.

Frames/s counts the camera's answers over the last few seconds; latency is
the answer record's timestamp minus the request record's (`tfstream-stream`
stamps each frame with its send time), so it spans queueing, batching,
inference and the reply's trip to the broker.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import re
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from aiokafka.errors import KafkaError

from consumer import kafka_io
from consumer.answer_log import LoggedAnswer
from consumer.protocol import CORRELATION_ID, REPLY_TO, Reply, Topics, header_map
from consumer.settings import KafkaClientSettings
from engines.errors import InvalidRequest, ServiceUnavailable
from producer_tools.camera_states import states_topic

log = logging.getLogger(__name__)

#: Frames kept per camera while their answers are on the way.
PENDING_PER_CAMERA = 64
#: Answers kept (per camera) whose frame has not been read yet.
EARLY_PER_CAMERA = 64
FPS_WINDOW_S = 5.0
#: Shadow answers kept per camera key, and camera keys kept, until their frame shows.
SHADOW_PER_CAMERA = 64
SHADOW_CAMERAS = 1024
NO_KEY = "(no key)"
#: Tracking event ids remembered to drop repeats.
EVENT_IDS_KEPT = 10_000


@dataclass
class _Frame:
    image: bytes
    timestamp_ms: int


@dataclass
class CameraView:
    """What the live page shows for one camera key of one model."""

    camera: str
    model: str
    version: int = 0
    image: bytes = b""
    boxes: list[dict[str, Any]] = field(default_factory=list)
    width: int = 0
    height: int = 0
    correlation_id: str = ""
    latency_ms: float | None = None
    answers: int = 0
    errors: int = 0
    last_error: str | None = None
    """The code of the latest failed frame."""
    worker: str = ""
    answered_at: deque[float] = field(default_factory=deque)
    pending: OrderedDict[str, _Frame] = field(default_factory=OrderedDict)
    early: OrderedDict[str, tuple[Reply, int]] = field(default_factory=OrderedDict)
    seen: OrderedDict[str, None] = field(default_factory=OrderedDict)
    shadows: dict[str, LoggedAnswer] = field(default_factory=dict)
    """Each shadow's answer to the frame on show, by shadow name."""
    lines: list[dict[str, Any]] = field(default_factory=list)
    zones: list[dict[str, Any]] = field(default_factory=list)
    """The camera's counting lines and zones (`<prefix>.zones`), to draw."""
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    """Events seen since the page started, by zone/line and kind (repeats dropped)."""
    source: dict[str, Any] | None = None
    """The camera's state as `tfstream-cameras` last published it (<prefix>.cameras)."""

    def fps(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        while self.answered_at and now - self.answered_at[0] > FPS_WINDOW_S:
            self.answered_at.popleft()
        if len(self.answered_at) < 2:
            return 0.0
        return (len(self.answered_at) - 1) / max(now - self.answered_at[0], 1e-3)

    def to_dict(self) -> dict[str, Any]:
        """The JSON the page receives; the frame as a data URL so one event is one picture."""
        return {
            "camera": self.camera,
            "model": self.model,
            "version": self.version,
            "image": "data:image/jpeg;base64," + base64.b64encode(self.image).decode()
            if self.image
            else None,
            "width": self.width,
            "height": self.height,
            "boxes": self.boxes,
            "correlation_id": self.correlation_id,
            "latency_ms": None if self.latency_ms is None else round(self.latency_ms, 1),
            "fps": round(self.fps(), 2),
            "answers": self.answers,
            "errors": self.errors,
            "last_error": self.last_error,
            "worker": self.worker,
            "shadows": [
                {
                    "name": name,
                    "boxes": list((a.reply.data or {}).get("bounding-boxes") or []),
                    "error": a.reply.error.code if a.reply.error else None,
                    "latency_ms": None if a.latency_ms is None else round(a.latency_ms, 1),
                    "worker": a.reply.worker,
                }
                for name, a in sorted(self.shadows.items())
            ],
            "lines": self.lines,
            "zones": self.zones,
            "counts": self.counts,
            "source": self.source,
        }


def _bounded_put(table: OrderedDict[str, Any], key: str, value: Any, limit: int) -> None:
    table[key] = value
    while len(table) > limit:
        table.popitem(last=False)


class LiveStreams:
    """Joins frames and answers per camera; `observe` is transport-free for tests."""

    def __init__(self, settings: KafkaClientSettings) -> None:
        self.settings = settings
        self.topics = Topics(settings.topic_prefix)
        self.cameras: dict[tuple[str, str], CameraView] = {}
        self.version = 0
        self._changed = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._consumer: Any = None
        prefix = re.escape(settings.topic_prefix)
        self._requests = re.compile(rf"^{prefix}\.requests\.(.+)$")
        self._results = re.compile(rf"^{prefix}\.results\.(.+)$")
        self._shadow = re.compile(rf"^{prefix}\.shadow\.([^.]+)\.(.+)$")
        self._events = re.compile(rf"^{prefix}\.events\.(.+)$")
        self._zones_topic = self.topics.zones
        self._geometry: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]] = {}
        self._event_ids: OrderedDict[str, None] = OrderedDict()
        self._cameras_consumer: Any = None
        self._cameras_reader: asyncio.Task[None] | None = None
        self._states = states_topic(settings.topic_prefix)
        self._shadow_answers: OrderedDict[
            tuple[str, str], OrderedDict[str, dict[str, LoggedAnswer]]
        ] = OrderedDict()

    # -- joining -----------------------------------------------------------------------

    def observe(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Any,
        timestamp_ms: int,
    ) -> bool:
        """Take one record of a request or results topic; True when a camera's view changed."""
        camera = key.decode("utf-8", "replace") if key is not None else NO_KEY
        if match := self._requests.match(topic):
            return self._observe_frame(match.group(1), camera, value, headers, timestamp_ms)
        if match := self._results.match(topic):
            return self._observe_answer(match.group(1), camera, value, timestamp_ms)
        if match := self._shadow.match(topic):
            return self._observe_shadow(match.group(1), match.group(2), camera, value)
        if match := self._events.match(topic):
            return self._observe_event(match.group(1), camera, value)
        if topic == self._zones_topic:
            return self._observe_camera(camera, value)
        if topic == self._states:
            return self._observe_state(camera, value)
        return False

    def _observe_camera(self, camera: str, value: bytes | None) -> bool:
        """A camera's zones and lines (a tombstone removes them), on every model's view."""
        if value is None:
            self._geometry.pop(camera, None)
        else:
            try:
                config = json.loads(value)
                lines = [
                    {"name": str(x["name"]), "start": x["start"], "end": x["end"]}
                    for x in config.get("lines") or []
                ]
                zones = [
                    {"name": str(x["name"]), "polygon": x["polygon"]}
                    for x in config.get("zones") or []
                ]
            except (ValueError, KeyError, TypeError, AttributeError):
                return False
            self._geometry[camera] = (lines, zones)
        changed = False
        for (_, name), view in self.cameras.items():
            if name == camera:
                view.lines, view.zones = self._geometry.get(camera, ([], []))
                self._bump(view)
                changed = True
        return changed

    def _observe_event(self, model: str, camera: str, value: bytes | None) -> bool:
        """Count a tracking event once (a repeat after a worker's death has the same id)."""
        try:
            event = json.loads(value or b"")
            event_id, target, kind = str(event["id"]), str(event["target"]), str(event["kind"])
        except (ValueError, KeyError, TypeError):
            return False
        if event_id in self._event_ids:
            return False
        _bounded_put(self._event_ids, event_id, None, EVENT_IDS_KEPT)
        view = self._view(model, camera)
        per_kind = view.counts.setdefault(target, {})
        per_kind[kind] = per_kind.get(kind, 0) + 1
        self._bump(view)
        return True

    def _observe_state(self, camera: str, value: bytes | None) -> bool:
        """A gateway's report on one camera: shown even before (or without) any answer."""
        try:
            state = json.loads(value or b"")
            model = str(state["model"])
        except (ValueError, KeyError, TypeError):
            return False
        view = self._view(model, camera)
        keep = ("state", "last_error", "fps_in", "fps_out", "frame_age_ms", "url")
        view.source = {k: state.get(k) for k in keep}
        self._bump(view)
        return True

    def _view(self, model: str, camera: str) -> CameraView:
        view = self.cameras.get((model, camera))
        if view is None:
            view = self.cameras[(model, camera)] = CameraView(camera=camera, model=model)
            view.lines, view.zones = self._geometry.get(camera, ([], []))
        return view

    def _observe_frame(
        self, model: str, camera: str, value: bytes | None, headers: Any, timestamp_ms: int
    ) -> bool:
        try:
            h = header_map(headers)
        except InvalidRequest:
            return False
        correlation_id = h.get(CORRELATION_ID, "").strip()
        if not correlation_id or h.get(REPLY_TO) or not value:
            return False  # request/reply calls are answered elsewhere; nothing to join
        view = self._view(model, camera)
        frame = _Frame(value, timestamp_ms)
        early = view.early.pop(correlation_id, None)
        if early is not None:
            return self._show(view, early[0], frame, early[1])
        _bounded_put(view.pending, correlation_id, frame, PENDING_PER_CAMERA)
        return False

    def _observe_answer(
        self, model: str, camera: str, value: bytes | None, timestamp_ms: int
    ) -> bool:
        try:
            reply = Reply.from_json(value or b"")
        except InvalidRequest:
            return False
        view = self._view(model, camera)
        correlation_id = reply.correlation_id or ""
        if correlation_id in view.seen:
            return False  # a redelivered request answered twice
        frame = view.pending.pop(correlation_id, None)
        if frame is None and reply.success:
            _bounded_put(view.early, correlation_id, (reply, timestamp_ms), EARLY_PER_CAMERA)
            return False
        return self._show(view, reply, frame, timestamp_ms)

    def _observe_shadow(self, name: str, model: str, camera: str, value: bytes | None) -> bool:
        """Keep a shadow's answer for its frame; True when that frame is on show."""
        try:
            answer = LoggedAnswer.from_json(value or b"")
        except InvalidRequest:
            return False
        correlation_id = answer.correlation_id
        if not correlation_id:
            return False
        table = self._shadow_answers.setdefault((model, camera), OrderedDict())
        self._shadow_answers.move_to_end((model, camera))
        while len(self._shadow_answers) > SHADOW_CAMERAS:
            self._shadow_answers.popitem(last=False)
        by_name = table.setdefault(correlation_id, {})
        by_name[name] = answer
        while len(table) > SHADOW_PER_CAMERA:
            table.popitem(last=False)
        view = self.cameras.get((model, camera))
        if view is None or view.correlation_id != correlation_id:
            return False
        view.shadows[name] = answer
        self._bump(view)
        return True

    def _bump(self, view: CameraView) -> None:
        self.version += 1
        view.version = self.version
        self._changed.set()

    def _show(self, view: CameraView, reply: Reply, frame: _Frame | None, answered_ms: int) -> bool:
        _bounded_put(view.seen, reply.correlation_id or "", None, 4 * PENDING_PER_CAMERA)
        view.answers += 1
        view.answered_at.append(time.monotonic())
        view.worker = reply.worker
        if frame is not None:
            view.latency_ms = float(answered_ms - frame.timestamp_ms)
        if reply.error is not None:
            view.errors += 1
            view.last_error = reply.error.code
        elif frame is not None:
            data = reply.data or {}
            view.image = frame.image
            view.boxes = list(data.get("bounding-boxes") or [])
            view.width = int(data.get("width") or 0)
            view.height = int(data.get("height") or 0)
            view.correlation_id = reply.correlation_id or ""
            table = self._shadow_answers.get((view.model, view.camera), {})
            view.shadows = dict(table.get(view.correlation_id, {}))
        self._bump(view)
        return True

    def changed_since(self, version: int) -> list[CameraView]:
        return sorted(
            (v for v in self.cameras.values() if v.version > version),
            key=lambda v: (v.model, v.camera),
        )

    async def wait_change(self, version: int, timeout_s: float) -> None:
        """Return once something is newer than `version`, or after `timeout_s`."""
        if self.version > version:
            return
        self._changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout_s)

    # -- reading Kafka -------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._reader is not None and not self._reader.done()

    async def start(self) -> None:
        """Start following the topics from their end.

        Raises:
            ServiceUnavailable: the broker cannot be reached.
        """
        prefix = re.escape(self.settings.topic_prefix)
        consumer = kafka_io.consumer(
            self.settings,
            "live",
            group_id=None,
            auto_offset_reset="latest",
            metadata_max_age_ms=2_000,  # see a new camera's model within seconds
        )
        try:
            await kafka_io.started(consumer)
        except (KafkaError, OSError) as exc:
            raise ServiceUnavailable(
                f"cannot reach Kafka at {self.settings.bootstrap}: {exc}"
            ) from exc
        consumer.subscribe(pattern=rf"^{prefix}\.((requests|results|shadow|events)\..+|cameras)$")
        self._consumer = consumer
        self._reader = asyncio.create_task(self._read(), name="live-streams")
        # The cameras' zones and lines: a compacted topic, read from its beginning.
        cameras = kafka_io.consumer(
            self.settings, "live", group_id=None, auto_offset_reset="earliest"
        )
        with contextlib.suppress(KafkaError, OSError):
            await kafka_io.started(cameras)
            cameras.subscribe([self._zones_topic])
            self._cameras_consumer = cameras
            self._cameras_reader = asyncio.create_task(
                self._read_from(cameras, "the cameras topic"), name="live-cameras"
            )

    async def _read(self) -> None:
        assert self._consumer is not None
        await self._read_from(self._consumer, "the live view's topics")

    async def _read_from(self, consumer: Any, reading: str) -> None:
        async for records in kafka_io.follow(consumer, reading, 1.0):
            for r in records:
                self.observe(r.topic, r.key, r.value, r.headers, r.timestamp)

    async def stop(self) -> None:
        if self._cameras_reader is not None:
            self._cameras_reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._cameras_reader
            self._cameras_reader = None
        if self._cameras_consumer is not None:
            with contextlib.suppress(Exception):
                await self._cameras_consumer.stop()
            self._cameras_consumer = None
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._reader = None
        if self._consumer is not None:
            with contextlib.suppress(Exception):
                await self._consumer.stop()
            self._consumer = None
