"""A camera's tracking state and the one function that moves it forward by a frame.

`CameraState` holds everything a camera's story needs to move between workers:
its tracker (tracks, ID counter, last timestamp), every zone's and line's per-track
memberships, the counts per zone/line, class and kind, and the position of the
last request applied. `to_bytes` is the value of the camera's record on the
compacted `<prefix>.state.<model>` topic (docs/tracking.md has the format);
`from_bytes` restores it under the camera's current configuration.

`apply` does no I/O and reads no clock: the same state bytes and the same frame
give the same boxes, events and state bytes. That is what makes a frame processed
again after a crash give the same event ids, and what lets a frame at or before
the stored position be refused without a side effect.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from consumer.tracking.config import CameraConfig, geometry_fingerprint
from consumer.tracking.events import Event, EventKind, Position, event_id
from consumer.tracking.tracker import CameraTracker
from consumer.tracking.zones import LineCounter, Observation, Transition, ZoneWatcher
from engines.boxes import Box
from engines.errors import TfstreamError

#: Bumped on any change `from_bytes` of an older version could misread.
STATE_VERSION = 1


class InvalidTrackingState(TfstreamError, code="invalid_tracking_state", http_status=500):
    """A state record that is not one `CameraState.to_bytes` made (or of another camera)."""


class TrackedBox(Box, total=False):
    """A wire box with the ID of its track; None while the track is not confirmed yet."""

    track_id: int | None


Counts = dict[str, dict[str, dict[str, int]]]
"""target name -> class name -> event kind -> count."""


@dataclass
class CameraState:
    config: CameraConfig
    tracker: CameraTracker | None
    lines: dict[str, LineCounter] = field(default_factory=dict)
    zones: dict[str, ZoneWatcher] = field(default_factory=dict)
    counts: Counts = field(default_factory=dict)
    position: Position | None = None

    @classmethod
    def new(cls, config: CameraConfig) -> CameraState:
        """A camera seen for the first time (or with no state record)."""
        return cls(
            config=config,
            tracker=CameraTracker(config.tracker) if config.tracking else None,
            lines={line.name: LineCounter(line) for line in config.lines},
            zones={zone.name: ZoneWatcher(zone) for zone in config.zones},
        )

    @property
    def camera(self) -> str:
        return self.config.camera

    def to_dict(self) -> dict[str, Any]:
        targets: dict[str, Any] = {}
        for name, watcher in (*self.lines.items(), *self.zones.items()):
            targets[name] = {
                "kind": watcher.config.kind,
                "geometry": geometry_fingerprint(watcher.config),
                "tracks": watcher.to_dict(),
            }
        return {
            "version": STATE_VERSION,
            "camera": self.camera,
            "position": None if self.position is None else self.position.to_dict(),
            "tracker": None if self.tracker is None else self.tracker.to_dict(),
            "targets": targets,
            "counts": self.counts,
        }

    def to_bytes(self) -> bytes:
        """Compact JSON; floats written as Python's repr, which reads back to the same bits."""
        return json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, config: CameraConfig, data: bytes) -> CameraState:
        """The stored state under `config`, the camera's configuration now.

        What the configuration no longer has is dropped: tracks when tracking is off,
        a removed zone or line with its counts. A zone or line whose geometry changed
        keeps its counts and starts its memberships anew (sides of a moved line mean
        nothing). A new zone or line starts empty.

        Raises:
            InvalidTrackingState: not a state record of this version and camera.
        """
        try:
            stored = json.loads(data)
            version = stored.get("version") if isinstance(stored, dict) else None
            if version != STATE_VERSION:
                raise InvalidTrackingState(
                    f"state record of version {version!r}, this worker reads {STATE_VERSION}"
                )
            if stored["camera"] != config.camera:
                raise InvalidTrackingState(
                    f"state record of camera {stored['camera']!r} read for {config.camera!r}"
                )
            state = cls.new(config)
            if state.tracker is not None and stored["tracker"] is not None:
                state.tracker = CameraTracker.from_dict(config.tracker, stored["tracker"])
            if stored["position"] is not None:
                state.position = Position.from_dict(stored["position"])
            for name, watcher in (*state.lines.items(), *state.zones.items()):
                saved = stored["targets"].get(name)
                if saved is None or saved["kind"] != watcher.config.kind:
                    continue
                if state.tracker is not None and saved["geometry"] == geometry_fingerprint(
                    watcher.config
                ):
                    watcher.load(saved["tracks"])
                if name in stored["counts"]:
                    state.counts[name] = {
                        str(c): {str(k): int(n) for k, n in kinds.items()}
                        for c, kinds in stored["counts"][name].items()
                    }
            return state
        except InvalidTrackingState:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise InvalidTrackingState(
                f"unreadable state record: {type(e).__name__}: {e}"
            ) from None

    def with_config(self, config: CameraConfig) -> CameraState:
        """This state under a changed configuration, by the rules of `from_bytes`."""
        return CameraState.from_bytes(config, self.to_bytes())


def apply(
    state: CameraState, position: Position, boxes: list[Box], timestamp_s: float
) -> tuple[list[TrackedBox], list[Event]]:
    """One frame of the camera: its boxes with track IDs, and the events it caused.

    `state` is updated in place. A frame at or before `state.position` (same topic
    and partition) was applied already: it changes nothing, emits nothing, and its
    boxes get `track_id` None. With tracking off the boxes come back as they came.

    boxes: wire boxes (engines/boxes.py), confidence in percent;
    timestamp_s: the frame's capture time, which sets the tracker's time step.
    """
    if state.position is not None and state.position.covers(position):
        return [TrackedBox(**box, track_id=None) for box in boxes], []
    state.position = position
    if state.tracker is None:
        return list(boxes), []

    xyxy = np.array(
        [[b["coordinates"][k] for k in ("left", "top", "right", "bottom")] for b in boxes],
        dtype=np.float64,
    ).reshape(len(boxes), 4)
    scores = np.array([b["confidence"] / 100.0 for b in boxes], dtype=np.float64)
    ids = state.tracker.update(xyxy, scores, timestamp_s)
    observations = [
        Observation(track_id, box["ObjectClassName"], tuple(map(float, row)))  # type: ignore[arg-type]
        for box, track_id, row in zip(boxes, ids, xyxy, strict=True)
        if track_id >= 0
    ]
    alive = state.tracker.alive_ids()
    # Stays are measured on the tracker's clock, which never goes back.
    now = state.tracker.clock_s if state.tracker.clock_s is not None else timestamp_s

    events: list[Event] = []

    def emit(target: str, transitions: list[Transition]) -> None:
        for t in transitions:
            events.append(
                Event(
                    id=event_id(state.camera, position, t.track_id, target, t.kind),
                    camera=state.camera,
                    position=position,
                    timestamp_s=timestamp_s,
                    track_id=t.track_id,
                    target=target,
                    kind=t.kind,
                    class_name=t.class_name,
                    dwell_s=t.dwell_s,
                )
            )
            per_class = state.counts.setdefault(target, {}).setdefault(t.class_name, {})
            per_class[t.kind.value] = per_class.get(t.kind.value, 0) + 1

    for name, line in state.lines.items():
        emit(name, line.observe(observations))
        emit(name, line.forget(alive, now))
    for name, zone in state.zones.items():
        emit(name, zone.observe(observations, now))
        emit(name, zone.forget(alive, now))

    tracked = [
        TrackedBox(**box, track_id=i if i >= 0 else None) for box, i in zip(boxes, ids, strict=True)
    ]
    return tracked, events


def count(state: CameraState, target: str, kind: EventKind, class_name: str | None = None) -> int:
    """A count of the state: of one class, or of all classes when class_name is None."""
    per_class = state.counts.get(target, {})
    classes = per_class.values() if class_name is None else [per_class.get(class_name, {})]
    return sum(kinds.get(kind.value, 0) for kinds in classes)
