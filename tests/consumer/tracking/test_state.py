"""consumer/tracking/state.py: exact counts through save/restore and replays, against the truth.

The frames are shapes moving on known paths (engines/modelgen/paths.py) with
detector-like noise; the generator knows every true crossing and zone stay.
"""

from __future__ import annotations

import json
import random

import pytest

from consumer.tracking.config import CameraConfig, LineConfig, ZoneConfig
from consumer.tracking.events import Event, EventKind, Position
from consumer.tracking.state import (
    STATE_VERSION,
    CameraState,
    InvalidTrackingState,
    TrackedBox,
    apply,
    count,
)
from engines.modelgen.paths import Frame, Scene, make_scene, noisy_frames
from tests.support.tracking_metrics import idf1

TOPIC = "tfstream.requests.shapes"


def _config(scene: Scene, camera: str = "cam-1", **kw: object) -> CameraConfig:
    return CameraConfig(
        camera=camera,
        lines=[LineConfig(name="door", start=scene.line_start, end=scene.line_end)],
        zones=[ZoneConfig(name="bay", polygon=scene.zone_polygon)],
        **kw,  # type: ignore[arg-type]
    )


def _at(frame: Frame) -> Position:
    return Position(TOPIC, 3, 1000 + frame.index)


def _line_counts(state: CameraState) -> dict[tuple[str, str], int]:
    return {
        (cls, kind): n
        for cls, kinds in state.counts.get("door", {}).items()
        for kind, n in kinds.items()
    }


def _zone_counts(state: CameraState, kind: str) -> dict[str, int]:
    return {cls: kinds[kind] for cls, kinds in state.counts.get("bay", {}).items() if kind in kinds}


@pytest.fixture(scope="module", params=[1, 2, 3])
def scene_frames(request: pytest.FixtureRequest) -> tuple[Scene, list[Frame]]:
    scene = make_scene(seed=100 + request.param)
    return scene, noisy_frames(scene, seed=200 + request.param)


def _run(config: CameraConfig, frames: list[Frame]) -> tuple[CameraState, list[Event], list]:
    state = CameraState.new(config)
    events: list[Event] = []
    answers = []
    for frame in frames:
        boxes, new = apply(state, _at(frame), frame.boxes, frame.timestamp_s)
        events += new
        answers.append(boxes)
    return state, events, answers


def test_counts_equal_the_truth_in_one_run(scene_frames: tuple[Scene, list[Frame]]) -> None:
    scene, frames = scene_frames
    state, events, _ = _run(_config(scene), frames)
    truth = scene.true_crossings()
    assert sum(truth.values()) >= 5 and sum(scene.true_zone_entries().values()) >= 5
    assert _line_counts(state) == truth
    assert _zone_counts(state, "enter") == scene.true_zone_entries()
    assert _zone_counts(state, "leave") == scene.true_zone_entries()
    assert len({e.id for e in events}) == len(events)
    assert count(state, "door", EventKind.CROSSED_IN) == sum(
        n for (_, kind), n in truth.items() if kind == "crossed_in"
    )


def test_restores_at_random_cuts_and_replays_give_exact_counts_and_the_same_ids(
    scene_frames: tuple[Scene, list[Frame]],
) -> None:
    """A worker dies at random points; the next one restores the last state record
    written and is handed the frames again from the last commit, which lags behind
    it. Frames at or before the state's position change nothing and emit nothing;
    the frames between the state and the death are processed again and emit the
    same events with the same ids, which a reader drops."""
    scene, frames = scene_frames
    config = _config(scene)
    _, reference_events, reference_answers = _run(config, frames)
    reference = {e.id: e for e in reference_events}

    rng = random.Random(7)
    state = CameraState.new(config)
    record, record_next = state.to_bytes(), 0  # the state topic's latest value, and after what
    committed = 0  # index of the next frame the group hands out after a restart
    seen: list[Event] = []
    i = restores = refused = 0
    while i < len(frames):
        frame = frames[i]
        before = state.to_bytes()
        boxes, events = apply(state, _at(frame), frame.boxes, frame.timestamp_s)
        seen += events  # published as they come: a crash after this repeats them
        if i < record_next:
            # Handed out again but applied already: nothing changes, nothing is emitted.
            assert events == [] and state.to_bytes() == before
            assert [b["track_id"] for b in boxes] == [None] * len(boxes)
            refused += 1
        else:
            assert boxes == reference_answers[i]
        # The worker may die between publishing the events and writing the state record
        # (the window that repeats events), or at any other point.
        dies_before_state = bool(events) and rng.random() < 0.25
        if not dies_before_state:
            # The state record, then (lagging, now and then) the commit.
            record, record_next = state.to_bytes(), max(record_next, i + 1)
            if rng.random() < 0.3:
                committed = max(committed, i + 1 - rng.randint(0, 3))
        i += 1
        if dies_before_state or rng.random() < 0.03:
            # Another worker restores the last state record and is handed the frames
            # again from the last commit.
            state = CameraState.from_bytes(config, record)
            i = committed
            restores += 1
    assert restores >= 3 and refused >= 3

    unique = {e.id: e for e in seen}
    assert unique == reference  # every event once after dropping repeats, same content
    assert len(seen) > len(unique)  # repeats happened, and were the same events
    assert _line_counts(state) == scene.true_crossings()
    assert _zone_counts(state, "enter") == scene.true_zone_entries()
    assert _zone_counts(state, "leave") == scene.true_zone_entries()


def _idf1(frames: list[Frame], answers: list[list[TrackedBox]]) -> float:
    return idf1([frame.truth for frame in frames], answers)


@pytest.mark.slow
def test_id_consistency_through_restores_equals_the_uninterrupted_run(
    scene_frames: tuple[Scene, list[Frame]],
) -> None:
    scene, frames = scene_frames
    config = _config(scene)
    _, _, reference_answers = _run(config, frames)
    baseline = _idf1(frames, reference_answers)
    assert baseline > 0.9

    rng = random.Random(3)
    state = CameraState.new(config)
    answers = []
    for frame in frames:
        if rng.random() < 0.1:
            state = CameraState.from_bytes(config, state.to_bytes())
        answers.append(apply(state, _at(frame), frame.boxes, frame.timestamp_s)[0])
    assert _idf1(frames, answers) == baseline

    # The counter-test: a camera that restarts its tracker instead scores lower.
    rng = random.Random(3)
    state = CameraState.new(config)
    restarted = []
    for frame in frames:
        if rng.random() < 0.1:
            state = CameraState.new(config)
        restarted.append(apply(state, _at(frame), frame.boxes, frame.timestamp_s)[0])
    assert _idf1(frames, restarted) < baseline


def test_two_cameras_never_share_ids_or_counts(scene_frames: tuple[Scene, list[Frame]]) -> None:
    scene, frames = scene_frames
    one, two = CameraState.new(_config(scene, "cam-1")), CameraState.new(_config(scene, "cam-2"))
    events_one: list[Event] = []
    for frame in frames:  # cam-2 gets only the first half
        events_one += apply(one, _at(frame), frame.boxes, frame.timestamp_s)[1]
        if frame.index < scene.frames // 2:
            apply(two, _at(frame), frame.boxes, frame.timestamp_s)
    assert _line_counts(one) == scene.true_crossings()
    assert _line_counts(two) != _line_counts(one)
    assert one.tracker is not None and two.tracker is not None
    assert one.tracker.to_dict()["next_id"] > two.tracker.to_dict()["next_id"]
    # Event ids differ per camera even for the same frame, track and target.
    assert all(e.camera == "cam-1" for e in events_one)


def test_a_camera_with_tracking_off_answers_exactly_as_it_came(
    scene_frames: tuple[Scene, list[Frame]],
) -> None:
    scene, frames = scene_frames
    state = CameraState.new(_config(scene, tracking=False))
    for frame in frames[:50]:
        boxes, events = apply(state, _at(frame), frame.boxes, frame.timestamp_s)
        assert boxes == frame.boxes and "track_id" not in json.dumps(boxes) and events == []
    assert state.counts == {} and json.loads(state.to_bytes())["tracker"] is None


def test_state_is_bounded_and_shrinks_when_the_scene_empties(
    scene_frames: tuple[Scene, list[Frame]],
) -> None:
    scene, frames = scene_frames
    sizes = []
    state = CameraState.new(_config(scene))
    for frame in frames:
        apply(state, _at(frame), frame.boxes, frame.timestamp_s)
        sizes.append(len(state.to_bytes()))
    last = frames[-1]
    # Two seconds of empty frames: every lost track expires (lost_track_buffer 30 -> 1 s).
    for k in range(1, 31):
        frame = Frame(last.index + k, last.timestamp_s + k / 15, [], [])
        apply(state, _at(frame), [], frame.timestamp_s)
    stored = json.loads(state.to_bytes())
    assert stored["tracker"]["tracks"] == []
    assert all(t["tracks"] == {} for t in stored["targets"].values())
    # Per camera, a few kB at most while objects are in view; counts and position after.
    assert max(sizes) < 8_000
    assert len(state.to_bytes()) < 1_000


def test_a_config_change_keeps_counts_and_resets_moved_geometry(
    scene_frames: tuple[Scene, list[Frame]],
) -> None:
    scene, frames = scene_frames
    config = _config(scene)
    state, _, _ = _run(config, frames[: len(frames) // 2])
    before = json.loads(json.dumps(state.counts))
    moved = config.model_copy(
        update={"lines": [config.lines[0].model_copy(update={"start": (0.0, 10.0)})]}
    )
    changed = state.with_config(moved)
    assert changed.counts == before
    stored = json.loads(changed.to_bytes())
    assert stored["targets"]["door"]["tracks"] == {}
    assert stored["tracker"] == json.loads(state.to_bytes())["tracker"]
    no_zone = config.model_copy(update={"zones": []})
    assert "bay" not in state.with_config(no_zone).counts


def test_unreadable_state_records_are_refused_with_a_stable_code() -> None:
    scene = make_scene(seed=1, movers=2, frames=200)
    config = _config(scene)
    good = CameraState.new(config).to_bytes()
    other = CameraState.new(_config(scene, "cam-9")).to_bytes()
    newer = json.dumps({**json.loads(good), "version": STATE_VERSION + 1}).encode()
    for bad in (b"", b"[]", b"{}", b"not json", other, newer, good[:-5]):
        with pytest.raises(InvalidTrackingState) as caught:
            CameraState.from_bytes(config, bad)
        assert caught.value.code == "invalid_tracking_state"


def test_a_camera_clock_stepping_back_never_makes_a_negative_stay() -> None:
    config = CameraConfig(
        camera="cam-1",
        zones=[ZoneConfig(name="bay", polygon=[(0, 0), (200, 0), (200, 160), (0, 160)])],
    )
    state = CameraState.new(config)
    box = {
        "ObjectClassName": "person",
        "ObjectClassId": 1,
        "confidence": 90.0,
        "coordinates": {"left": 80, "top": 80, "right": 120, "bottom": 150},
    }
    outside = {**box, "coordinates": {"left": 80, "top": 100, "right": 120, "bottom": 170}}
    times = [100.0, 100.1, 100.2, 100.3, 50.0, 50.1, 50.2]  # the clock jumps back
    events: list[Event] = []
    for i, (t, b) in enumerate(zip(times, [box] * 4 + [outside] * 3, strict=True)):
        events += apply(state, Position(TOPIC, 0, i), [b], t)[1]  # type: ignore[list-item]
    assert [e.kind for e in events] == [EventKind.ENTER, EventKind.LEAVE]
    assert events[1].dwell_s is not None and events[1].dwell_s > 0
