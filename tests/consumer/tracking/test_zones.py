"""consumer/tracking/zones.py: crossings with direction and hysteresis, zone stays, bounds."""

from __future__ import annotations

from consumer.tracking.config import LineConfig, ZoneConfig
from consumer.tracking.events import EventKind
from consumer.tracking.zones import LineCounter, Observation, ZoneWatcher

# A horizontal line y = 100 from x = 0 to 200; "in" is upwards on screen (its left).
LINE = LineConfig(name="door", start=(0, 100), end=(200, 100), min_frames=2)


def _box(cy: float, cx: float = 100, track: int = 1, cls: str = "person") -> Observation:
    return Observation(track, cls, (cx - 10, cy - 10, cx + 10, cy + 10))


def _run(counter: LineCounter, centres: list[float], **kw: object) -> list[EventKind]:
    kinds: list[EventKind] = []
    for cy in centres:
        kinds += [t.kind for t in counter.observe([_box(cy, **kw)])]  # type: ignore[arg-type]
    return kinds


def test_a_crossing_counts_once_with_its_direction() -> None:
    assert _run(LineCounter(LINE), [150, 130, 100, 80, 60, 40]) == [EventKind.CROSSED_IN]
    assert _run(LineCounter(LINE), [40, 70, 100, 130, 160]) == [EventKind.CROSSED_OUT]


def test_a_box_jittering_on_the_line_counts_once() -> None:
    # Crosses, then jitters around the line: across it (neither side) or one frame
    # back over it, never min_frames in a row on the old side.
    centres = [150, 130, 80, 75, 95, 105, 112, 85, 99, 112, 88, 80, 70]
    assert _run(LineCounter(LINE), centres) == [EventKind.CROSSED_IN]


def test_one_frame_over_the_line_is_not_a_crossing_but_min_frames_is() -> None:
    assert _run(LineCounter(LINE), [150, 150, 70, 150, 150]) == []
    one = LineCounter(LINE.model_copy(update={"min_frames": 1}))
    assert _run(one, [150, 150, 70, 150, 150]) == [EventKind.CROSSED_IN, EventKind.CROSSED_OUT]


def test_a_box_beside_the_ends_of_the_line_does_not_count() -> None:
    assert _run(LineCounter(LINE), [150, 130, 80, 60], cx=230) == []


def test_class_filter() -> None:
    cars = LineCounter(LINE.model_copy(update={"classes": ["car"]}))
    assert _run(cars, [150, 130, 80, 60]) == []
    assert _run(cars, [150, 130, 80, 60], cls="car") == [EventKind.CROSSED_IN]


def test_state_round_trips_mid_crossing_and_forgets_expired_tracks() -> None:
    a = LineCounter(LINE)
    assert _run(a, [150, 130, 70]) == []  # one frame on the new side so far
    b = LineCounter(LINE)
    b.load(a.to_dict())
    assert b.to_dict() == a.to_dict()
    assert _run(b, [60]) == [EventKind.CROSSED_IN]
    b.forget(set(), 1.0)
    assert b.to_dict() == {}


ZONE = ZoneConfig(name="bay", polygon=[(0, 0), (100, 0), (100, 100), (0, 100)], dwell_s=2.0)


def _zone_run(zone: ZoneWatcher, bottoms: list[float]) -> list[tuple[EventKind, float | None]]:
    out = []
    for i, bottom in enumerate(bottoms):
        obs = Observation(7, "person", (40, bottom - 30, 60, bottom))
        out += [(t.kind, t.dwell_s) for t in zone.observe([obs], float(i))]
    return out


def test_zone_enter_dwell_leave_with_hysteresis() -> None:
    zone = ZoneWatcher(ZONE)
    # bottom-centre y: outside (>100), one frame in (ignored), in, in, ... out, out.
    got = _zone_run(zone, [150, 90, 150, 90, 80, 70, 60, 50, 150, 60, 150, 150])
    assert got == [
        (EventKind.ENTER, None),  # second frame in a row inside: t = 4
        (EventKind.DWELL, 2.0),  # t = 6
        (EventKind.LEAVE, 7.0),  # second frame in a row outside: t = 11
    ]
    assert zone.to_dict() == {}  # nothing kept for a track outside


def test_zone_track_expiring_inside_leaves() -> None:
    zone = ZoneWatcher(ZONE)
    _zone_run(zone, [50, 50, 50])
    copy = ZoneWatcher(ZONE)
    copy.load(zone.to_dict())
    leaves = copy.forget(set(), 10.0)
    assert [(t.kind, t.track_id, t.class_name, t.dwell_s) for t in leaves] == [
        (EventKind.LEAVE, 7, "person", 9.0)
    ]
    assert copy.to_dict() == {}
