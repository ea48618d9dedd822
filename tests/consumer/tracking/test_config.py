"""consumer/tracking/config.py: cameras from YAML/JSON, as records of the cameras topic."""

from __future__ import annotations

import json

import pytest

from consumer.tracking.config import (
    CameraConfig,
    InvalidCameraConfig,
    geometry_fingerprint,
    parse_cameras,
)

YAML = """
cameras:
  - camera: dock-1
    lines:
      - name: door
        start: [80, 240]
        end: [560, 240]
        classes: [person]
    zones:
      - name: bay
        polygon: [[200, 300], [440, 300], [440, 400], [200, 400]]
        dwell_s: 30
  - camera: gate
    tracking: false
"""


def test_yaml_and_json_give_the_same_cameras() -> None:
    cameras = parse_cameras(YAML)
    assert [c.camera for c in cameras] == ["dock-1", "gate"]
    assert cameras[0].lines[0].classes == ["person"] and cameras[0].zones[0].dwell_s == 30
    assert cameras[0].tracker.lost_track_buffer == 30 and not cameras[1].tracking
    as_json = json.dumps({"cameras": [c.model_dump() for c in cameras]})
    assert parse_cameras(as_json) == cameras


def test_a_camera_travels_as_one_record_keyed_by_camera() -> None:
    camera = parse_cameras(YAML)[0]
    key, value = camera.to_record()
    assert key == b"dock-1"
    assert CameraConfig.from_record(value) == camera


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("cameras: [{camera: a, lines: [{name: l, start: [1, 1], end: [1, 1]}]}]", "lines"),
        ("cameras: [{camera: a, zones: [{name: z, polygon: [[0, 0], [1, 1]]}]}]", "polygon"),
        (
            "cameras: [{camera: a, lines: [{name: x, start: [0, 0], end: [1, 1]}],"
            " zones: [{name: x, polygon: [[0, 0], [1, 0], [1, 1]]}]}]",
            "used twice",
        ),
        ("cameras: [{camera: a}, {camera: a}]", "listed twice"),
        ("cameras: [{camera: a, colour: red}]", "colour"),
        ("cameras: [{camera: a", "not YAML"),
        ("- just a list", "document"),
    ],
)
def test_bad_configuration_gets_a_stable_code_and_says_where(text: str, where: str) -> None:
    with pytest.raises(InvalidCameraConfig) as caught:
        parse_cameras(text)
    assert caught.value.code == "invalid_camera_config"
    assert where in caught.value.message
    with pytest.raises(InvalidCameraConfig):
        CameraConfig.from_record(b'{"camera": ""}')


def test_geometry_fingerprint_follows_points_not_filters() -> None:
    line = parse_cameras(YAML)[0].lines[0]
    assert geometry_fingerprint(line) == geometry_fingerprint(
        line.model_copy(update={"classes": ["car"], "min_frames": 5})
    )
    assert geometry_fingerprint(line) != geometry_fingerprint(
        line.model_copy(update={"end": (560.0, 250.0)})
    )
