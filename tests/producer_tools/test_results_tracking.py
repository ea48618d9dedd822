"""tfstream-results with tracked cameras: track IDs on answer lines, and event lines."""

from __future__ import annotations

import json
from types import SimpleNamespace

from consumer.protocol import Reply, detection_data
from producer_tools.results import describe, describe_event

BOX = {
    "ObjectClassName": "red rectangle",
    "ObjectClassId": 1,
    "confidence": 99.0,
    "coordinates": {"left": 1, "top": 2, "right": 30, "bottom": 40},
}


def _record(value: bytes, key: bytes = b"dock") -> SimpleNamespace:
    return SimpleNamespace(key=key, value=value, timestamp=0, partition=0, offset=7)


def test_answer_lines_carry_track_ids_only_for_tracked_cameras() -> None:
    boxes = [{**BOX, "track_id": 3}, {**BOX, "track_id": None}]
    line = describe(_record(Reply("c1", "m", data=detection_data(boxes, None, 64, 48)).to_json()))
    assert line is not None and line.track_ids == [3, None]
    assert "tracks=[3, -]" in line.text()
    assert json.loads(line.json())["track_ids"] == [3, None]
    plain = describe(_record(Reply("c2", "m", data=detection_data([BOX], None, 64, 48)).to_json()))
    assert plain is not None and plain.track_ids == [] and "tracks=" not in plain.text()


def test_event_lines() -> None:
    event = {
        "id": "ab12", "camera": "dock", "kind": "crossed_in", "target": "door",
        "class": "red rectangle", "track_id": 3, "dwell_s": None,
        "position": {"topic": "t", "partition": 0, "offset": 9}, "timestamp_s": 1.5,
    }  # fmt: skip
    line = describe_event(_record(json.dumps(event).encode()))
    assert line is not None
    assert line.text() == (
        "camera=dock crossed_in door class=red rectangle track=3 offset=9 id=ab12"
    )
    assert json.loads(line.json()) == event
    assert describe_event(_record(b"not json")) is None
    assert describe_event(_record(b'{"no": "kind"}')) is None
