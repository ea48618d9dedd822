"""consumer/tracking/cameras.py: configurations and states by camera, records in and out."""

from __future__ import annotations

import json

import pytest

from consumer.tracking.cameras import Cameras
from consumer.tracking.config import CameraConfig, InvalidCameraConfig, LineConfig, ZoneConfig
from consumer.tracking.events import Event, Position
from consumer.tracking.state import CameraState
from engines.modelgen.paths import Frame, Scene, make_scene, noisy_frames

TOPIC = "tfstream.requests.shapes"


@pytest.fixture(scope="module")
def scene_frames() -> tuple[Scene, list[Frame]]:
    scene = make_scene(seed=21)
    return scene, noisy_frames(scene, seed=22)


def _record(scene: Scene, camera: str) -> tuple[bytes, bytes]:
    return CameraConfig(
        camera=camera,
        lines=[LineConfig(name="door", start=scene.line_start, end=scene.line_end)],
        zones=[ZoneConfig(name="bay", polygon=scene.zone_polygon)],
    ).to_record()


def _at(frame: Frame) -> Position:
    return Position(TOPIC, 0, frame.index)


def _door(state: CameraState | None) -> dict[tuple[str, str], int]:
    assert state is not None
    return {
        (cls, kind): n for cls, kinds in state.counts["door"].items() for kind, n in kinds.items()
    }


def test_a_camera_moves_to_another_worker_through_its_records(
    scene_frames: tuple[Scene, list[Frame]],
) -> None:
    scene, frames = scene_frames
    cameras_topic = [_record(scene, "cam-1"), _record(scene, "cam-2")]
    state_topic: list[tuple[bytes, bytes]] = []  # compacted: the last value per key counts
    events: list[Event] = []

    first = Cameras()
    for key, value in cameras_topic:
        first.configure(key, value)
    cut = len(frames) // 2
    for frame in frames[:cut]:
        for camera in ("cam-1", "cam-2"):
            out = first.apply(camera, _at(frame), frame.boxes, frame.timestamp_s)
            events += out.events
            assert out.state_record is not None and out.restore_error is None
            state_topic.append(out.state_record)

    # Another worker: configurations, then the state topic to its end, then the frames
    # from a commit three frames back (already applied: refused without events).
    second = Cameras()
    for key, value in cameras_topic:
        second.configure(key, value)
    for key, value in state_topic:
        second.restore(key, value)
    assert second.cameras == {"cam-1", "cam-2"}
    for frame in frames[cut - 3 :]:
        out = second.apply("cam-1", _at(frame), frame.boxes, frame.timestamp_s)
        if frame.index <= frames[cut - 1].index:
            assert out.events == [] and out.state_record is None
        events += out.events
    assert _door(second.state("cam-1")) == scene.true_crossings()
    assert len({e.id for e in events if e.camera == "cam-1"}) == sum(
        1 for e in events if e.camera == "cam-1"
    )
    second.revoke(["cam-2"])
    assert second.cameras == {"cam-1"}


def test_a_camera_without_a_record_follows_the_default(
    scene_frames: tuple[Scene, list[Frame]],
) -> None:
    _, frames = scene_frames
    off = Cameras()
    out = off.apply("cam-x", _at(frames[0]), frames[0].boxes, 0.0)
    assert out.boxes == frames[0].boxes and out.state_record is None
    on = Cameras(default=CameraConfig(camera="any"))
    out = on.apply("cam-x", _at(frames[0]), frames[0].boxes, 0.0)
    assert all("track_id" in b for b in out.boxes)
    assert out.state_record is not None and out.state_record[0] == b"cam-x"
    assert json.loads(out.state_record[1])["camera"] == "cam-x"


def test_configuration_changes_apply_without_a_restart(
    scene_frames: tuple[Scene, list[Frame]],
) -> None:
    scene, frames = scene_frames
    cameras = Cameras()
    cameras.configure(*_record(scene, "cam-1"))
    for frame in frames[:300]:
        cameras.apply("cam-1", _at(frame), frame.boxes, frame.timestamp_s)
    before = cameras.state("cam-1")
    assert before is not None and before.counts
    # A tracking-off record: boxes as they came from the next frame on.
    key, value = _record(scene, "cam-1")
    off = json.loads(value) | {"tracking": False}
    cameras.configure(key, json.dumps(off).encode())
    frame = frames[300]
    assert cameras.apply("cam-1", _at(frame), frame.boxes, 1.0).boxes == frame.boxes
    # Back on: the counts kept meanwhile are still there.
    cameras.configure(key, value)
    state = cameras.state("cam-1")
    assert state is not None and state.counts == before.counts
    # A tombstone with no default: untracked, its state kept for when it returns.
    cameras.configure(key, None)
    assert cameras.apply("cam-1", _at(frame), frame.boxes, 1.0).state_record is None
    assert "cam-1" in cameras.cameras


def test_bad_records_keep_the_worker_going(scene_frames: tuple[Scene, list[Frame]]) -> None:
    scene, frames = scene_frames
    cameras = Cameras()
    key, value = _record(scene, "cam-1")
    cameras.configure(key, value)
    with pytest.raises(InvalidCameraConfig):
        cameras.configure(key, b"{not json")
    with pytest.raises(InvalidCameraConfig):
        cameras.configure(b"cam-2", value)  # keyed by another camera
    assert cameras.config("cam-1") is not None and cameras.config("cam-2") is None
    # A state record that cannot be read: the frame is answered, the camera starts anew.
    cameras.restore(key, b'{"version": 99}')
    out = cameras.apply("cam-1", _at(frames[0]), frames[0].boxes, 0.0)
    assert out.restore_error is not None and out.restore_error.code == "invalid_tracking_state"
    assert out.state_record is not None
    out = cameras.apply("cam-1", _at(frames[1]), frames[1].boxes, 0.1)
    assert out.restore_error is None
    # A tombstone on the state topic: the camera starts anew too, without an error.
    cameras.restore(key, None)
    out = cameras.apply("cam-1", _at(frames[2]), frames[2].boxes, 0.2)
    assert out.restore_error is None and json.loads(out.state_record[1])["counts"] == {}
