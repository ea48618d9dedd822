"""Shapes moving on known straight paths, with the truth of every line crossing and zone stay.

The ground truth for tracking, zone and line tests and benchmarks. A `Scene` is
a camera image size, one counting line, one rectangular zone and `Mover`s: one
shape class each (`images.SHAPE_CLASSES`, at most one mover per class at a time,
as the shapes detector finds one object per class), a box size, and a straight
path walked at constant speed between two frames. The truth is plain geometry
on the noise-free paths: a crossing is the path's centre changing side of the
line, a zone stay the path's anchor point entering the rectangle. `make_scene`
only keeps paths whose truth is beyond doubt for any reasonable detector noise
(starts and ends clear of the line and zone, a crossing well inside the line's
ends, a stay long enough to be seen, no two boxes overlapping), so a counter
that is right must match the truth exactly.

`noisy_frames` turns a scene into what a worker would receive: wire boxes
(engines/boxes.py) with pixel jitter, missed detections and frames dropped by
latest-frame-wins (a gap in the timestamps). No TensorFlow: numpy only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from engines.boxes import Box
from engines.modelgen.images import SHAPE_CLASSES

Point = tuple[float, float]


@dataclass(frozen=True)
class Mover:
    """One object: its box (w x h) centred on a point that moves start -> end."""

    id: int
    class_id: int
    class_name: str
    width: float
    height: float
    start: Point
    end: Point
    first_frame: int
    last_frame: int

    def center(self, frame: int) -> Point:
        span = max(self.last_frame - self.first_frame, 1)
        f = (frame - self.first_frame) / span
        return (
            self.start[0] + f * (self.end[0] - self.start[0]),
            self.start[1] + f * (self.end[1] - self.start[1]),
        )

    def box(self, frame: int) -> tuple[float, float, float, float]:
        x, y = self.center(frame)
        return (x - self.width / 2, y - self.height / 2, x + self.width / 2, y + self.height / 2)

    def centers(self, frames: np.ndarray) -> np.ndarray:
        """[len(frames), 2] centres, as `center` gives them one by one."""
        span = max(self.last_frame - self.first_frame, 1)
        f = ((frames - self.first_frame) / span)[:, np.newaxis]
        return np.array(self.start) + f * (np.array(self.end) - np.array(self.start))

    def alive(self, frame: int) -> bool:
        return self.first_frame <= frame <= self.last_frame


@dataclass(frozen=True)
class Scene:
    """A camera's worth of truth. The zone's anchor is the box's bottom centre."""

    width: int
    height: int
    fps: float
    frames: int
    line_start: Point
    line_end: Point
    zone: tuple[float, float, float, float]
    """(left, top, right, bottom) of the rectangular zone."""
    movers: tuple[Mover, ...]

    @property
    def zone_polygon(self) -> list[Point]:
        left, top, right, bottom = self.zone
        return [(left, top), (right, top), (right, bottom), (left, bottom)]

    def line_side(self, point: Point) -> float:
        """Negative on the left-hand side of start -> end as seen on screen (y down)."""
        (sx, sy), (ex, ey) = self.line_start, self.line_end
        return (ex - sx) * (point[1] - sy) - (ey - sy) * (point[0] - sx)

    def true_crossings(self) -> dict[tuple[str, str], int]:
        """(class name, "crossed_in" | "crossed_out") -> number of movers that crossed."""
        out: dict[tuple[str, str], int] = {}
        (sx, sy), (ex, ey) = self.line_start, self.line_end
        for m in self.movers:
            before, after = self.line_side(m.start), self.line_side(m.end)
            if before * after >= 0:
                continue
            # Where the path meets the line, as a fraction of start -> end: only a
            # crossing of the segment itself counts, not one beside its ends.
            f = before / (before - after)
            x = m.start[0] + f * (m.end[0] - m.start[0]) - sx
            y = m.start[1] + f * (m.end[1] - m.start[1]) - sy
            along = (x * (ex - sx) + y * (ey - sy)) / ((ex - sx) ** 2 + (ey - sy) ** 2)
            if 0.0 <= along <= 1.0:
                kind = "crossed_in" if after < 0 else "crossed_out"
                out[(m.class_name, kind)] = out.get((m.class_name, kind), 0) + 1
        return out

    def true_zone_entries(self) -> dict[str, int]:
        """class name -> number of movers whose path enters the zone (each once)."""
        out: dict[str, int] = {}
        for m in self.movers:
            if _inside_length(_anchor_path(m), self.zone) > 0:
                out[m.class_name] = out.get(m.class_name, 0) + 1
        return out


@dataclass(frozen=True)
class Frame:
    """One frame as a worker gets it, and the truth behind it."""

    index: int
    timestamp_s: float
    boxes: list[Box]
    truth: list[tuple[int, tuple[float, float, float, float]]]
    """(mover id, noise-free box) of every mover in view, detected or missed."""


def _anchor_path(m: Mover) -> tuple[Point, Point]:
    return (m.start[0], m.start[1] + m.height / 2), (m.end[0], m.end[1] + m.height / 2)


def _inside_length(path: tuple[Point, Point], rect: tuple[float, float, float, float]) -> float:
    """Length of the segment inside the rectangle (Liang-Barsky clipping)."""
    (x0, y0), (x1, y1) = path
    dx, dy = x1 - x0, y1 - y0
    t_low, t_high = 0.0, 1.0
    left, top, right, bottom = rect
    for p, q in ((-dx, x0 - left), (dx, right - x0), (-dy, y0 - top), (dy, bottom - y0)):
        if p == 0:
            if q < 0:
                return 0.0
            continue
        t = q / p
        if p < 0:
            t_low = max(t_low, t)
        else:
            t_high = min(t_high, t)
    if t_high <= t_low:
        return 0.0
    return (t_high - t_low) * math.hypot(dx, dy)


def _grow(rect: tuple[float, float, float, float], by: float) -> tuple[float, float, float, float]:
    return rect[0] - by, rect[1] - by, rect[2] + by, rect[3] + by


def make_scene(
    seed: int,
    movers: int = 24,
    frames: int = 900,
    width: int = 640,
    height: int = 480,
    fps: float = 15.0,
    margin_px: float = 12.0,
    one_per_class: bool = True,
) -> Scene:
    """A scene whose every mover has an unambiguous truth (see the module docstring).

    one_per_class: at most one mover of a class in view at a time, as the shapes
    detector can find them in rendered frames; off for crowded benchmark scenes.

    margin_px: how far (beyond the box itself) a path must stay from any boundary
    it does not cross, and how deep it must go past one it does; several times
    the jitter `noisy_frames` adds.
    """
    rng = np.random.default_rng(seed)
    line_y = height / 2
    line_start, line_end = (width * 0.125, line_y), (width * 0.875, line_y)
    zone = (width * 0.3, height * 0.62, width * 0.7, height * 0.82)
    placed: list[Mover] = []
    tries = 0
    while len(placed) < movers:
        tries += 1
        if tries > 200_000:
            raise RuntimeError(f"placed only {len(placed)} of {movers} movers")
        cls = SHAPE_CLASSES[int(rng.integers(len(SHAPE_CLASSES)))]
        w, h = float(rng.uniform(36, 64)), float(rng.uniform(36, 64))
        start = (float(rng.uniform(w, width - w)), float(rng.uniform(h, height - h)))
        # Aimed at the line or through the zone two times in three, so both get traffic.
        aim = int(rng.integers(3))
        if aim == 0:
            target = (float(rng.uniform(line_start[0], line_end[0])), line_y)
        elif aim == 1:
            target = (float(rng.uniform(zone[0], zone[2])), float(rng.uniform(zone[1], zone[3])))
        else:
            target = (float(rng.uniform(w, width - w)), float(rng.uniform(h, height - h)))
        reach = float(rng.uniform(1.3, 2.5))
        end = (
            min(max(start[0] + reach * (target[0] - start[0]), w), width - w),
            min(max(start[1] + reach * (target[1] - start[1]), h), height - h),
        )
        length = math.dist(start, end)
        speed = float(rng.uniform(3.0, 7.0))  # px per frame
        steps = int(length / speed)
        if steps < 30:
            continue
        first = int(rng.integers(0, frames - steps))
        m = Mover(len(placed), cls.id, cls.display_name, w, h, start, end, first, first + steps)
        if _clear(m, line_start, line_end, zone, margin_px, speed) and _apart(
            m, placed, one_per_class
        ):
            placed.append(m)
    return Scene(width, height, fps, frames, line_start, line_end, zone, tuple(placed))


def _clear(
    m: Mover,
    line_start: Point,
    line_end: Point,
    zone: tuple[float, float, float, float],
    margin: float,
    speed: float,
) -> bool:
    """The mover's truth cannot be mistaken: see `make_scene`."""
    line_y = line_start[1]  # the scene's line is horizontal
    clear_y = m.height / 2 + margin + 6 * speed  # fully over, for several frames
    d0, d1 = m.start[1] - line_y, m.end[1] - line_y
    if abs(d0) < clear_y or abs(d1) < clear_y:
        return False
    if d0 * d1 < 0:
        # Crossing: well inside the line's ends, steep enough to stay in its band.
        f = d0 / (d0 - d1)
        x_cross = m.start[0] + f * (m.end[0] - m.start[0])
        room = m.width / 2 + margin + 10 * speed
        if not line_start[0] + room <= x_cross <= line_end[0] - room:
            return False
        if abs(m.end[0] - m.start[0]) > 0.5 * abs(m.end[1] - m.start[1]):
            return False
    path = _anchor_path(m)
    # Start and end outside the zone, clear of it.
    for point in path:
        left, top, right, bottom = _grow(zone, margin)
        if left <= point[0] <= right and top <= point[1] <= bottom:
            return False
    deep = _inside_length(path, _grow(zone, -margin))
    near = _inside_length(path, _grow(zone, margin))
    return near == 0.0 or deep >= 8 * speed


def _apart(m: Mover, placed: list[Mover], one_per_class: bool) -> bool:
    """No two boxes within 24 px at the same time (nor two of a class, if one_per_class)."""
    for other in placed:
        lo, hi = max(m.first_frame, other.first_frame), min(m.last_frame, other.last_frame)
        if lo > hi:
            continue
        if one_per_class and other.class_id == m.class_id:
            return False
        reach = math.hypot(m.width, m.height) / 2 + math.hypot(other.width, other.height) / 2
        frames = np.arange(lo, hi + 1)
        gaps = np.linalg.norm(m.centers(frames) - other.centers(frames), axis=1)
        if float(gaps.min()) < reach + 24:
            return False
    return True


def noisy_frames(
    scene: Scene,
    seed: int,
    jitter_px: float = 1.5,
    miss: float = 0.05,
    skip: float = 0.2,
) -> list[Frame]:
    """The frames a worker would answer, in order.

    jitter_px: standard deviation of each box edge; miss: chance a mover in view is
    not detected in a frame; skip: chance a frame never reaches the worker
    (latest-frame-wins), leaving a gap in the timestamps.
    """
    rng = np.random.default_rng(seed)
    out: list[Frame] = []
    for index in range(scene.frames):
        if index > 0 and rng.random() < skip:
            continue
        truth = [(m.id, m.box(index)) for m in scene.movers if m.alive(index)]
        boxes: list[Box] = []
        for mover_id, box in truth:
            if rng.random() < miss:
                continue
            m = scene.movers[mover_id]
            noisy = np.array(box) + rng.normal(0.0, jitter_px, 4)
            left, top = max(0, round(noisy[0])), max(0, round(noisy[1]))
            right, bottom = min(scene.width, round(noisy[2])), min(scene.height, round(noisy[3]))
            boxes.append(
                {
                    "ObjectClassName": m.class_name,
                    "ObjectClassId": m.class_id,
                    "confidence": round(float(rng.uniform(75.0, 99.0)), 2),
                    "coordinates": {"left": left, "top": top, "right": right, "bottom": bottom},
                }
            )
        boxes.sort(key=lambda b: -b["confidence"])
        out.append(Frame(index, index / scene.fps, boxes, truth))
    return out
