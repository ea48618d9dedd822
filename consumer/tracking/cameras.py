"""The tracking side of one worker for one model: configurations and states by camera.

What the worker's Kafka code will call, kept free of Kafka so it is tested
without a broker. The three topics map to three methods, each taking a record's
key and value as they come (a None value is a tombstone):

* `<prefix>.zones` -> `configure`: the latest configuration of each camera;
* `<prefix>.state.<model>` -> `restore`, for the partitions just assigned, read
  to their end before their frames run (the last record of a camera wins);
* request frames -> `apply`, which gives the answer's boxes, the events to
  publish, and the state record to write after them (before the commit).

`revoke` drops what a revoked partition's cameras held, so a worker keeps only
the state of the cameras it serves.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from consumer.tracking.config import CameraConfig, InvalidCameraConfig
from consumer.tracking.events import Event, Position
from consumer.tracking.state import CameraState, InvalidTrackingState, TrackedBox, apply
from engines.boxes import Box


@dataclass(frozen=True)
class Outcome:
    """What one frame gives: the answer's boxes, events, and the state record to write
    (None when the camera is not tracked, or the frame was applied already)."""

    boxes: list[TrackedBox] | list[Box]
    events: list[Event]
    state_record: tuple[bytes, bytes] | None
    restore_error: InvalidTrackingState | None = None
    """The camera's stored state could not be read: it started anew (log and count it)."""


class Cameras:
    """Camera configurations and states of one model on one worker.

    default: the configuration of a camera with no record of its own on the cameras
    topic (the model's `config.json` turning tracking on with no zones or lines), or
    None to leave such cameras untracked.
    """

    def __init__(self, default: CameraConfig | None = None) -> None:
        self._default = default
        self._configs: dict[str, CameraConfig] = {}
        self._states: dict[str, CameraState] = {}
        self._stored: dict[str, bytes] = {}

    def config(self, camera: str) -> CameraConfig | None:
        if camera in self._configs:
            return self._configs[camera]
        if self._default is None:
            return None
        return self._default.model_copy(update={"camera": camera})

    def configure(self, key: bytes, value: bytes | None) -> None:
        """A record of the cameras topic; a change applies from the camera's next frame.

        Raises:
            InvalidCameraConfig: a value that is no camera configuration, or one whose
                camera is not its key; the camera's previous configuration stays.
        """
        camera = key.decode()
        if value is None:
            self._configs.pop(camera, None)
        else:
            config = CameraConfig.from_record(value)
            if config.camera != camera:
                raise InvalidCameraConfig(
                    f"cameras record keyed {camera!r} configures {config.camera!r}"
                )
            self._configs[camera] = config
        state = self._states.get(camera)
        if state is not None:
            config_now = self.config(camera)
            if config_now is None:
                self._stored[camera] = state.to_bytes()
                del self._states[camera]
            else:
                self._states[camera] = state.with_config(config_now)

    def restore(self, key: bytes, value: bytes | None) -> None:
        """A record of the state topic. Kept as bytes and read at the camera's next
        frame, so that reading a partition's state to its end costs no parsing."""
        camera = key.decode()
        self._states.pop(camera, None)
        if value is None:
            self._stored.pop(camera, None)
        else:
            self._stored[camera] = value

    def revoke(self, cameras: Iterable[str]) -> None:
        """Forget the cameras of partitions this worker no longer serves."""
        for camera in cameras:
            self._states.pop(camera, None)
            self._stored.pop(camera, None)

    def state(self, camera: str) -> CameraState | None:
        """The camera's state, restored from its stored record on first use.

        Raises:
            InvalidTrackingState: the stored record cannot be read; it is dropped, so
                the next frame starts the camera anew instead of failing again.
        """
        if camera in self._states:
            return self._states[camera]
        config = self.config(camera)
        if config is None:
            return None
        stored = self._stored.pop(camera, None)
        state = (
            CameraState.new(config) if stored is None else CameraState.from_bytes(config, stored)
        )
        self._states[camera] = state
        return state

    def apply(
        self, camera: str, position: Position, boxes: list[Box], timestamp_s: float
    ) -> Outcome:
        """One frame of `camera`; a state record that cannot be read never fails the
        frame: the camera starts anew and the outcome says why."""
        error: InvalidTrackingState | None = None
        try:
            state = self.state(camera)
        except InvalidTrackingState as e:
            error = e
            state = self.state(camera)  # the bad record was dropped: a new state
        if state is None or not state.config.tracking:
            return Outcome(boxes, [], None, error)
        if state.position is not None and state.position.covers(position):
            tracked, _ = apply(state, position, boxes, timestamp_s)
            return Outcome(tracked, [], None, error)
        tracked, events = apply(state, position, boxes, timestamp_s)
        return Outcome(tracked, events, (camera.encode(), state.to_bytes()), error)

    def untracked(self, camera: str) -> bool:
        """Whether the camera is neither configured (by its own record or the default)
        nor holds a state: what a frame's path checks first, without building the
        camera's configuration."""
        return (
            self._default is None
            and camera not in self._configs
            and camera not in self._states
            and camera not in self._stored
        )

    def has_state(self, camera: str) -> bool:
        """Whether the camera has a state here (in memory or a stored record)."""
        return camera in self._states or camera in self._stored

    @property
    def cameras(self) -> set[str]:
        """Cameras with a state in memory or stored, for measuring and revoking."""
        return set(self._states) | set(self._stored)
