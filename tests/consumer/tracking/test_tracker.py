"""consumer/tracking/tracker.py: a restored tracker continues with the IDs the original gives."""

from __future__ import annotations

import importlib.metadata
import json

import numpy as np
import pytest

from consumer.tracking.config import TrackerConfig
from consumer.tracking.tracker import CameraTracker
from engines.modelgen.paths import Frame, make_scene, noisy_frames


def _arrays(frame: Frame) -> tuple[np.ndarray, np.ndarray, float]:
    xyxy = np.array(
        [[b["coordinates"][k] for k in ("left", "top", "right", "bottom")] for b in frame.boxes],
        dtype=np.float64,
    ).reshape(-1, 4)
    scores = np.array([b["confidence"] / 100 for b in frame.boxes])
    return xyxy, scores, frame.timestamp_s


@pytest.fixture(scope="module")
def frames() -> list[Frame]:
    return noisy_frames(make_scene(seed=11, frames=500), seed=12)


@pytest.mark.slow
def test_restored_tracker_gives_the_same_ids_at_every_cut(frames: list[Frame]) -> None:
    config = TrackerConfig()
    a = CameraTracker(config)
    expected = [a.update(*_arrays(f)) for f in frames]
    assert max(max(ids, default=-1) for ids in expected) >= 10  # real tracks, several
    for cut in range(0, len(frames), 25):
        b = CameraTracker(config)
        got = [b.update(*_arrays(f)) for f in frames[:cut]]
        # Through JSON text, as the state record carries it.
        c = CameraTracker.from_dict(config, json.loads(json.dumps(b.to_dict())))
        got += [c.update(*_arrays(f)) for f in frames[cut:]]
        assert got == expected, f"cut at frame {cut}"
        assert c.to_dict() == a.to_dict()


def test_a_tracker_restored_as_new_restarts_ids_so_restore_is_what_keeps_them(
    frames: list[Frame],
) -> None:
    # The counter-test: without the restore, IDs after the cut differ from the
    # original's, so the test above could fail.
    config = TrackerConfig()
    a = CameraTracker(config)
    expected = [a.update(*_arrays(f)) for f in frames]
    cut = len(frames) // 2
    b = CameraTracker(config)
    got = [b.update(*_arrays(f)) for f in frames[:cut]]
    fresh = CameraTracker(config)
    got += [fresh.update(*_arrays(f)) for f in frames[cut:]]
    assert got != expected


def test_each_camera_has_its_own_id_sequence(frames: list[Frame]) -> None:
    one, two = CameraTracker(TrackerConfig()), CameraTracker(TrackerConfig())
    ids_one = [one.update(*_arrays(f)) for f in frames[:100]]
    ids_two = [two.update(*_arrays(f)) for f in frames[:100]]
    # The same frames on two cameras: the same IDs, each from 0, neither advancing the other.
    assert ids_one == ids_two
    assert min(i for ids in ids_one for i in ids if i >= 0) == 0


def test_skipped_frames_widen_the_time_step_instead_of_counting_as_misses() -> None:
    # One box moving 6 px per frame at 30 fps, delivered only every 4th frame: with the
    # capture times the Kalman step spans the gap and the box keeps its track.
    config = TrackerConfig(frame_rate=30.0)
    tracker = CameraTracker(config)
    ids = []
    for frame in range(0, 200, 4):
        x = 10.0 + 6.0 * frame
        box = np.array([[x, 100.0, x + 30.0, 160.0]])
        ids.append(tracker.update(box, np.array([0.9]), frame / 30.0)[0])
    assert ids[0] == -1 and set(ids[1:]) == {0}


def test_a_lost_track_expires_after_its_budget_in_seconds() -> None:
    config = TrackerConfig(lost_track_buffer=30)  # 1 s
    tracker = CameraTracker(config)
    for frame in range(10):
        box = np.array([[100.0 + frame, 100.0, 140.0 + frame, 160.0]])
        tracker.update(box, np.array([0.9]), frame / 30.0)
    assert tracker.alive_ids() == {0}
    empty = np.zeros((0, 4))
    tracker.update(empty, np.zeros(0), 10 / 30.0 + 0.9)
    assert tracker.alive_ids() == {0}
    tracker.update(empty, np.zeros(0), 10 / 30.0 + 1.2)
    assert tracker.alive_ids() == set() and tracker.track_count == 0
    assert len(json.dumps(tracker.to_dict())) < 100


def test_a_time_not_after_the_last_counts_as_the_next_frame_without_a_warning() -> None:
    tracker = CameraTracker(TrackerConfig())
    box = np.array([[100.0, 100.0, 140.0, 160.0]])
    tracker.update(box, np.array([0.9]), 5.0)
    # The suite turns warnings into errors: the library's "earlier timestamp" warning
    # would fail here, and the frame would be dropped untracked.
    assert tracker.update(box, np.array([0.9]), 4.0) == [0]
    assert tracker.to_dict()["last_timestamp"] == pytest.approx(5.0 + 1 / 30.0)


def test_the_headless_opencv_stays_the_only_cv2() -> None:
    # deploy/tracking-requirements.txt is installed without dependencies so that
    # trackers' opencv-python never replaces the headless cv2 the images need.
    with pytest.raises(importlib.metadata.PackageNotFoundError):
        importlib.metadata.distribution("opencv-python")
    assert importlib.metadata.version("trackers") == "2.6.1"
