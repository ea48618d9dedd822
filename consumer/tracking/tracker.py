"""One camera's ByteTrack (Roboflow `trackers`), with its state as plain data.

Why a wrapper: `trackers.ByteTrackTracker` keeps its ID counter per instance (so
each camera has its own ID sequence) and takes each frame's capture time (a gap
widens the Kalman step and the lost-track budget is in seconds), but it has no
save/restore. Its Kalman filter does (`KalmanFilter.get_state`/`set_state`); the
rest of a track is five counters. So `to_dict` reads, and `from_dict` writes
back, exactly what the next `update` reads:

* per tracker: the next ID, the last timestamp, the tracks in their order (the
  assignment's tie-breaks follow it);
* per track: ID (-1 while immature), age, misses in frames and seconds,
  consecutive hits, the Kalman state x (8) and covariance P (8 x 8) as the
  float64 bytes themselves (base64), so a restored tracker computes bit for bit
  what the original would have.

The Kalman matrices F and Q are rebuilt for every predict from the step, and H
and R are fixed by the tracklet class, so a track made anew and given x and P is
the same track. tests/consumer/tracking/test_tracker.py holds this to account:
frames through one tracker, or through save/restore at every cut, give the same
IDs. The library is pinned (deploy/tracking-requirements.txt) because this
reads attributes it does not promise.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import supervision as sv
from trackers import ByteTrackTracker
from trackers.core.bytetrack.tracklet import ByteTrackTracklet

from consumer.tracking.config import TrackerConfig

_DIM_X = 8  # XYXY state: x1, y1, x2, y2 and their velocities


def _pack(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array, dtype="<f8").tobytes()).decode()


def _unpack(text: str, shape: tuple[int, ...]) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f8").astype(np.float64).reshape(shape)


class CameraTracker:
    """ByteTrack for one camera: boxes in, one track ID per box out."""

    def __init__(self, config: TrackerConfig) -> None:
        self.config = config
        self._bytetrack = ByteTrackTracker(
            lost_track_buffer=config.lost_track_buffer,
            frame_rate=config.frame_rate,
            track_activation_threshold=config.track_activation_threshold,
            minimum_consecutive_frames=config.minimum_consecutive_frames,
            minimum_iou_threshold=config.minimum_iou_threshold,
            high_conf_det_threshold=config.high_conf_det_threshold,
        )

    def update(self, xyxy: np.ndarray, scores: np.ndarray, timestamp_s: float) -> list[int]:
        """Track IDs of one frame's boxes, in their order; -1 for a box with no ID yet.

        xyxy: float [N, 4] (left, top, right, bottom) pixels; scores: [N] in [0, 1];
        timestamp_s: the frame's capture time. A time not after the previous one
        (a camera clock stepping back) counts as one nominal frame later, so the
        frame is tracked and the clock stays increasing.
        """
        last = self._bytetrack._last_timestamp
        if last is not None and not timestamp_s > last:
            timestamp_s = last + 1.0 / self.config.frame_rate
        n = len(xyxy)
        detections = sv.Detections(
            xyxy=np.asarray(xyxy, dtype=np.float64).reshape(n, 4),
            confidence=np.asarray(scores, dtype=np.float64).reshape(n),
            data={"row": np.arange(n)},
        )
        result = self._bytetrack.update(detections, timestamp=float(timestamp_s))
        ids = [-1] * n
        if len(result):
            for row, track_id in zip(result.data["row"], result.tracker_id, strict=True):
                ids[int(row)] = int(track_id)
        return ids

    def alive_ids(self) -> set[int]:
        """IDs of the tracks still kept (seen or lost within the budget)."""
        return {t.tracker_id for t in self._bytetrack.tracks if t.tracker_id >= 0}

    @property
    def clock_s(self) -> float | None:
        """The time of the last frame as the tracker took it (never going back)."""
        return self._bytetrack._last_timestamp

    @property
    def track_count(self) -> int:
        return len(self._bytetrack.tracks)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready state; `from_dict` of it continues exactly as this tracker would."""
        bt = self._bytetrack
        return {
            "next_id": bt._next_track_id,
            "last_timestamp": bt._last_timestamp,
            "tracks": [
                {
                    "id": t.tracker_id,
                    "age": t.age,
                    "misses": t.time_since_update,
                    "misses_s": t.time_since_update_seconds,
                    "hits": t.number_of_successful_consecutive_updates,
                    "x": _pack(t.state_estimator.kf.state),
                    "p": _pack(t.state_estimator.kf.state_covariance),
                }
                for t in bt.tracks
            ],
        }

    @classmethod
    def from_dict(cls, config: TrackerConfig, data: dict[str, Any]) -> CameraTracker:
        """Raises KeyError, ValueError or TypeError on data not made by `to_dict`."""
        tracker = cls(config)
        bt = tracker._bytetrack
        bt._next_track_id = int(data["next_id"])
        last = data["last_timestamp"]
        bt._last_timestamp = None if last is None else float(last)
        tracks = []
        for item in data["tracks"]:
            # Any box will do: the state that the box would seed is overwritten below.
            track = ByteTrackTracklet(
                initial_bbox=np.zeros(4), state_estimator_class=bt.state_estimator_class
            )
            kf = track.state_estimator.kf
            kf.state = _unpack(item["x"], (_DIM_X, 1))
            kf.state_covariance = _unpack(item["p"], (_DIM_X, _DIM_X))
            track.state_estimator.motion.reset_cache()
            track.tracker_id = int(item["id"])
            track.age = int(item["age"])
            track.time_since_update = int(item["misses"])
            track.time_since_update_seconds = float(item["misses_s"])
            track.number_of_successful_consecutive_updates = int(item["hits"])
            tracks.append(track)
        bt.tracks = tracks
        return tracker
