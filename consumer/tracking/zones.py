"""Line crossings and zone memberships of tracks, with hysteresis, as plain data.

Why not supervision's `LineZone` / `PolygonZone`: `LineZone`'s semantics are the
model here (a box is on a side only with all four corners there and inside the
segment's band; a crossing needs `min_frames` frames in a row on the new side;
frames across the line neither extend nor reset the run), but it keeps that state
in private attributes with no save/restore, and forgets a track after two calls
without it, whatever the tracker still keeps, so a short burst of missed
detections on the line loses the crossing. `PolygonZone` tests membership on a
pixel mask as large as the polygon's extent (megabytes per zone on a 1080p
camera). So the geometry is a few numpy lines and OpenCV's `pointPolygonTest`,
and the per-track state is a small dict that `CameraState` saves; a track's
entry goes when the tracker drops the track (`forget`), which bounds it.

Everything is deterministic in its inputs: the same observations in the same
order give the same transitions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from consumer.tracking.config import LineConfig, ZoneConfig
from consumer.tracking.events import EventKind


@dataclass(frozen=True)
class Observation:
    """One tracked box of a frame: (left, top, right, bottom) pixels."""

    track_id: int
    class_name: str
    xyxy: tuple[float, float, float, float]


@dataclass(frozen=True)
class Transition:
    """What a frame did to one track at one zone or line; becomes an `Event`."""

    track_id: int
    class_name: str
    kind: EventKind
    dwell_s: float | None = None


class LineCounter:
    """Crossings of one line. State per track: the confirmed side and the run of frames
    seen on the other side (`{"side": "L"|"R", "run": n}`)."""

    def __init__(self, config: LineConfig) -> None:
        self.config = config
        self._start = np.array(config.start, dtype=np.float64)
        self._dir = np.array(config.end, dtype=np.float64) - self._start
        self._len2 = float(self._dir @ self._dir)
        self._start_xy = (float(self._start[0]), float(self._start[1]))
        self._dir_xy = (float(self._dir[0]), float(self._dir[1]))
        self._classes = frozenset(config.classes)
        self.tracks: dict[int, dict[str, Any]] = {}

    def side(self, xyxy: tuple[float, float, float, float]) -> str | None:
        """Side "L" or "R" when all four corners are on that side and within the segment's
        band; None for a box across the line or beside its ends."""
        # Plain floats, not numpy: four corners are too few for numpy's per-call cost,
        # and this runs for every tracked box at every line of every frame.
        sx, sy = self._start_xy
        dx, dy = self._dir_xy
        sides = set()
        for x, y in (
            (xyxy[0], xyxy[1]),
            (xyxy[2], xyxy[1]),
            (xyxy[0], xyxy[3]),
            (xyxy[2], xyxy[3]),
        ):
            rx, ry = x - sx, y - sy
            along = (rx * dx + ry * dy) / self._len2
            if along < 0.0 or along > 1.0:
                return None
            cross = dx * ry - dy * rx
            sides.add("L" if cross < 0.0 else "R" if cross > 0.0 else None)
        if len(sides) == 1:
            return sides.pop()
        return None

    def observe(self, observations: list[Observation]) -> list[Transition]:
        out: list[Transition] = []
        for obs in observations:
            if self._classes and obs.class_name not in self._classes:
                continue
            side = self.side(obs.xyxy)
            if side is None:
                continue
            state = self.tracks.get(obs.track_id)
            if state is None:
                # The first side seen is where the track starts: nothing crossed yet.
                self.tracks[obs.track_id] = {"side": side, "run": 0}
            elif side == state["side"]:
                state["run"] = 0
            else:
                state["run"] += 1
                if state["run"] >= self.config.min_frames:
                    state["side"] = side
                    state["run"] = 0
                    kind = EventKind.CROSSED_IN if side == "L" else EventKind.CROSSED_OUT
                    out.append(Transition(obs.track_id, obs.class_name, kind))
        return out

    def forget(self, alive: set[int], timestamp_s: float) -> list[Transition]:
        """Drop the tracks the tracker no longer keeps; a line has nothing to report."""
        for track_id in [t for t in self.tracks if t not in alive]:
            del self.tracks[track_id]
        return []

    def to_dict(self) -> dict[str, Any]:
        return {str(k): dict(v) for k, v in sorted(self.tracks.items())}

    def load(self, data: dict[str, Any]) -> None:
        self.tracks = {
            int(k): {"side": str(v["side"]), "run": int(v["run"])} for k, v in data.items()
        }


class ZoneWatcher:
    """Members of one zone. State per track that is inside or about to change:
    `{"inside": bool, "run": n, "since": t, "dwelt": bool, "class": name}` (since: the
    time it entered; class: the one it entered as, for a leave by expiry)."""

    def __init__(self, config: ZoneConfig) -> None:
        self.config = config
        self._polygon = np.array(config.polygon, dtype=np.float32).reshape(-1, 1, 2)
        self._classes = frozenset(config.classes)
        self.tracks: dict[int, dict[str, Any]] = {}

    def contains(self, xyxy: tuple[float, float, float, float]) -> bool:
        """The box's anchor inside the polygon or on its edge."""
        left, top, right, bottom = xyxy
        y = bottom if self.config.anchor == "bottom_center" else (top + bottom) / 2.0
        point = ((left + right) / 2.0, y)
        return cv2.pointPolygonTest(self._polygon, point, False) >= 0

    def observe(self, observations: list[Observation], timestamp_s: float) -> list[Transition]:
        out: list[Transition] = []
        for obs in observations:
            if self._classes and obs.class_name not in self._classes:
                continue
            inside_now = self.contains(obs.xyxy)
            state = self.tracks.get(obs.track_id)
            if state is None:
                if not inside_now:
                    continue  # outside and staying so: nothing to keep
                state = self.tracks[obs.track_id] = {
                    "inside": False, "run": 0, "since": None, "dwelt": False, "class": ""
                }  # fmt: skip
            if inside_now == state["inside"]:
                state["run"] = 0
            else:
                state["run"] += 1
                if state["run"] >= self.config.min_frames:
                    state["run"] = 0
                    if inside_now:
                        state.update(inside=True, since=timestamp_s, dwelt=False)
                        state["class"] = obs.class_name
                        out.append(Transition(obs.track_id, obs.class_name, EventKind.ENTER))
                    else:
                        stay = timestamp_s - state["since"]
                        del self.tracks[obs.track_id]
                        out.append(Transition(obs.track_id, obs.class_name, EventKind.LEAVE, stay))
                        continue
            if not state["inside"] and state["run"] == 0:
                del self.tracks[obs.track_id]
                continue
            dwell = self.config.dwell_s
            if state["inside"] and dwell is not None and not state["dwelt"]:
                stay = timestamp_s - state["since"]
                if stay >= dwell:
                    state["dwelt"] = True
                    out.append(Transition(obs.track_id, obs.class_name, EventKind.DWELL, stay))
        return out

    def forget(self, alive: set[int], timestamp_s: float) -> list[Transition]:
        """Drop the tracks the tracker no longer keeps; one that was inside leaves."""
        out: list[Transition] = []
        for track_id in sorted(t for t in self.tracks if t not in alive):
            state = self.tracks.pop(track_id)
            if state["inside"]:
                stay = timestamp_s - state["since"]
                out.append(Transition(track_id, state["class"], EventKind.LEAVE, stay))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {str(k): dict(v) for k, v in sorted(self.tracks.items())}

    def load(self, data: dict[str, Any]) -> None:
        self.tracks = {
            int(k): {
                "inside": bool(v["inside"]),
                "run": int(v["run"]),
                "since": None if v["since"] is None else float(v["since"]),
                "dwelt": bool(v["dwelt"]),
                "class": str(v["class"]),
            }
            for k, v in data.items()
        }
