"""consumer/tracking/events.py: ids from (camera, position, track, target, kind); records."""

from __future__ import annotations

import json

from consumer.tracking.events import Event, EventKind, Position, event_id

AT = Position("tfstream.requests.shapes", 2, 41)


def test_the_id_is_a_function_of_its_five_fields_only() -> None:
    base = event_id("cam", AT, 3, "door", EventKind.CROSSED_IN)
    assert base == event_id("cam", Position(AT.topic, 2, 41), 3, "door", EventKind.CROSSED_IN)
    others = {
        event_id("cam2", AT, 3, "door", EventKind.CROSSED_IN),
        event_id("cam", Position(AT.topic + "x", 2, 41), 3, "door", EventKind.CROSSED_IN),
        event_id("cam", Position(AT.topic, 1, 41), 3, "door", EventKind.CROSSED_IN),
        event_id("cam", Position(AT.topic, 2, 42), 3, "door", EventKind.CROSSED_IN),
        event_id("cam", AT, 4, "door", EventKind.CROSSED_IN),
        event_id("cam", AT, 3, "bay", EventKind.CROSSED_IN),
        event_id("cam", AT, 3, "door", EventKind.CROSSED_OUT),
    }
    assert len(others) == 7 and base not in others


def test_covers_is_same_partition_at_or_before() -> None:
    assert AT.covers(AT) and AT.covers(Position(AT.topic, 2, 7))
    assert not AT.covers(Position(AT.topic, 2, 42))
    assert not AT.covers(Position(AT.topic, 3, 7))
    assert not AT.covers(Position("other", 2, 7))


def test_event_record_round_trips_keyed_by_camera() -> None:
    event = Event(
        id=event_id("cam", AT, 3, "bay", EventKind.LEAVE),
        camera="cam",
        position=AT,
        timestamp_s=12.5,
        track_id=3,
        target="bay",
        kind=EventKind.LEAVE,
        class_name="person",
        dwell_s=4.25,
    )
    key, value = event.to_record()
    assert key == b"cam"
    assert Event.from_dict(json.loads(value)) == event
    assert json.loads(value)["kind"] == "leave"
