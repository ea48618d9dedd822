"""Events (line crossings, zone enter/leave/dwell) and the request position they come from.

An event's id is a hash of (camera, request position, track, zone/line, kind):
the frame at topic/partition/offset processed again, from the same state, gives
the same events with the same ids, so a reader of `<prefix>.events.<model>` drops
repeats by id. Nothing here talks to Kafka; `Event.to_record` gives key and value.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any


class EventKind(StrEnum):
    """What happened to a track at a zone or line."""

    CROSSED_IN = "crossed_in"
    """Crossed a line to the left-hand side of start -> end, as seen on screen."""
    CROSSED_OUT = "crossed_out"
    """Crossed a line to its right-hand side."""
    ENTER = "enter"
    """Came into a zone (held for the zone's min_frames)."""
    LEAVE = "leave"
    """Left a zone, or its track expired inside it; carries the stay's length."""
    DWELL = "dwell"
    """Stayed in a zone longer than its dwell_s: once per stay."""


@dataclass(frozen=True, order=True)
class Position:
    """Where a request record was read: the offset orders frames of one partition."""

    topic: str
    partition: int
    offset: int

    def covers(self, other: Position) -> bool:
        """True when `other` is this position or before it in the same partition: a frame
        there was applied already. Another topic or partition is never covered (a
        camera moved to another request topic starts its offsets anew)."""
        return (
            self.topic == other.topic
            and self.partition == other.partition
            and other.offset <= self.offset
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(data: dict[str, Any]) -> Position:
        return Position(str(data["topic"]), int(data["partition"]), int(data["offset"]))


def event_id(camera: str, position: Position, track_id: int, target: str, kind: EventKind) -> str:
    """128 bits of SHA-256 over the fields, NUL-separated (no field holds a NUL that
    could make two tuples collide: names come from JSON and Kafka topic names)."""
    text = "\0".join(
        [camera, position.topic, str(position.partition), str(position.offset),
         str(track_id), target, kind.value]
    )  # fmt: skip
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Event:
    """One record of `<prefix>.events.<model>`, keyed by camera (docs/tracking.md)."""

    id: str
    camera: str
    position: Position
    timestamp_s: float
    """Capture time of the frame the event was seen in."""
    track_id: int
    target: str
    """Name of the zone or line."""
    kind: EventKind
    class_name: str
    dwell_s: float | None = None
    """For leave and dwell: seconds since the track entered the zone."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "camera": self.camera,
            "position": self.position.to_dict(),
            "timestamp_s": self.timestamp_s,
            "track_id": self.track_id,
            "target": self.target,
            "kind": self.kind.value,
            "class": self.class_name,
            "dwell_s": self.dwell_s,
        }

    @staticmethod
    def from_dict(data: dict[str, Any]) -> Event:
        return Event(
            id=str(data["id"]),
            camera=str(data["camera"]),
            position=Position.from_dict(data["position"]),
            timestamp_s=float(data["timestamp_s"]),
            track_id=int(data["track_id"]),
            target=str(data["target"]),
            kind=EventKind(data["kind"]),
            class_name=str(data["class"]),
            dwell_s=None if data.get("dwell_s") is None else float(data["dwell_s"]),
        )

    def to_record(self) -> tuple[bytes, bytes]:
        """Key (the camera, so a camera's events keep their order) and JSON value."""
        return self.camera.encode(), json.dumps(self.to_dict(), separators=(",", ":")).encode()
