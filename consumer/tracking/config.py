"""A camera's tracking configuration: tracker settings, zones, lines, class filters.

One `CameraConfig` per camera, parsed from the YAML (or JSON, which is YAML) that
`tfstream-zones` reads, and small enough to travel as one record of a compacted
`<prefix>.zones` topic keyed by camera (`to_record` / `from_record`), so that a
change reaches every worker without a restart. Nothing here talks to Kafka.

Coordinates are pixels of the image as the client sent it, x against the width and
y against the height: the frame of the wire boxes (engines/boxes.py), so zones and
lines are compared with boxes without a conversion.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from engines.errors import InvalidCameraConfig

Point = tuple[float, float]


class TrackerConfig(BaseModel):
    """ByteTrack's settings (Roboflow `trackers`), with its own defaults.

    The lost-track budget is in time, not frames: the worker passes each frame's
    capture time, so frames skipped by latest-frame-wins widen the Kalman step
    instead of counting as misses.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    lost_track_buffer: int = Field(30, ge=0, le=3000)
    """A lost track is kept for lost_track_buffer / 30 seconds, then expires."""
    frame_rate: float = Field(30.0, gt=0)
    """The camera's nominal frames per second: the unit of one Kalman step."""
    track_activation_threshold: float = Field(0.7, ge=0, le=1)
    """Minimum score (0-1) of a detection that starts a track."""
    minimum_consecutive_frames: int = Field(2, ge=1, le=100)
    """Frames in a row a new track must be seen before it gets an ID."""
    minimum_iou_threshold: float = Field(0.1, ge=0, le=1)
    high_conf_det_threshold: float = Field(0.6, ge=0, le=1)


class LineConfig(BaseModel):
    """A counting line from `start` to `end`.

    A box is on one side when all four of its corners are (a box across the line is
    on neither) and it lies within the segment's perpendicular band. A crossing
    counts when a track was on one side and is then seen `min_frames` frames in a
    row on the other: a box jittering on the line counts once, a one-frame flicker
    never. Direction `in` is a move to the left-hand side of start -> end as seen
    on screen (y down), `out` the other way.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["line"] = "line"
    name: str = Field(min_length=1, max_length=100)
    start: Point
    end: Point
    classes: list[str] = []
    """Class names counted; empty counts every class."""
    min_frames: int = Field(2, ge=1, le=100)

    @model_validator(mode="after")
    def _not_a_point(self) -> LineConfig:
        if self.start == self.end:
            raise ValueError(f"line {self.name!r}: start and end are the same point")
        return self


class ZoneConfig(BaseModel):
    """A polygon zone: enter, leave and dwell of tracks whose anchor point is inside.

    Membership flips after `min_frames` frames in a row on the other side of the
    boundary (hysteresis). A track first seen inside enters after `min_frames`
    frames there. `dwell_s`, when set, emits one `dwell` event per stay longer than it.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["zone"] = "zone"
    name: str = Field(min_length=1, max_length=100)
    polygon: list[Point] = Field(min_length=3, max_length=256)
    classes: list[str] = []
    """Class names watched; empty watches every class."""
    anchor: Literal["bottom_center", "center"] = "bottom_center"
    """The point of a box that must be inside: its feet (default) or its centre."""
    min_frames: int = Field(2, ge=1, le=100)
    dwell_s: float | None = Field(None, gt=0)


Target = Annotated[LineConfig | ZoneConfig, Field(discriminator="kind")]


class CameraConfig(BaseModel):
    """What a worker needs to track one camera; `tracking: false` answers as before."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    camera: str = Field(min_length=1, max_length=249)
    tracking: bool = True
    tracker: TrackerConfig = TrackerConfig()
    lines: list[LineConfig] = []
    zones: list[ZoneConfig] = []

    @model_validator(mode="after")
    def _unique_names(self) -> CameraConfig:
        names = [t.name for t in (*self.lines, *self.zones)]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"camera {self.camera!r}: zone/line names used twice: {repeated}")
        return self

    def to_record(self) -> tuple[bytes, bytes]:
        """Key and value of this camera's record on the compacted `<prefix>.zones` topic."""
        return self.camera.encode(), self.model_dump_json(exclude_defaults=False).encode()

    @staticmethod
    def from_record(value: bytes) -> CameraConfig:
        """Raises InvalidCameraConfig for a value that is not a camera configuration."""
        try:
            return CameraConfig.model_validate_json(value)
        except ValidationError as e:
            raise InvalidCameraConfig(_first_error(e)) from None


def geometry_fingerprint(target: LineConfig | ZoneConfig) -> str:
    """Changes when what a membership means changes (points, anchor), not with a rename
    of classes or thresholds: a moved line resets its sides, kept counts stay."""
    data = target.model_dump(include={"kind", "start", "end", "polygon", "anchor"})
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


class CamerasFile(BaseModel):
    """The file `tfstream-zones` reads: `cameras:` followed by a list of cameras."""

    model_config = ConfigDict(extra="forbid")

    cameras: list[CameraConfig]

    @model_validator(mode="after")
    def _unique_cameras(self) -> CamerasFile:
        names = [c.camera for c in self.cameras]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"cameras listed twice: {repeated}")
        return self


def parse_cameras(text: str) -> list[CameraConfig]:
    """Cameras of a YAML or JSON document.

    Raises:
        InvalidCameraConfig: not YAML, or a rule broken (the first one, with its path).
    """
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise InvalidCameraConfig(f"not YAML or JSON: {e}") from None
    try:
        return CamerasFile.model_validate(data).cameras
    except ValidationError as e:
        raise InvalidCameraConfig(_first_error(e)) from None


def _first_error(e: ValidationError) -> str:
    err = e.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "document"
    return f"{where}: {err['msg']}"
