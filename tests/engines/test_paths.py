"""engines/modelgen/paths.py: the truth of hand-checked paths, and the frames' noise."""

from __future__ import annotations

import math

import numpy as np

from engines.modelgen.paths import Mover, Scene, make_scene, noisy_frames


def _scene(*movers: Mover) -> Scene:
    return Scene(640, 480, 15.0, 100, (80, 240), (560, 240), (192, 298, 448, 394), movers)


def test_truth_of_hand_made_paths() -> None:
    up = Mover(0, 1, "red rectangle", 40, 40, (300, 400), (300, 100), 0, 60)
    down = Mover(1, 2, "green disc", 40, 40, (100, 100), (120, 420), 0, 60)
    beside = Mover(2, 3, "blue rectangle", 40, 40, (600, 100), (600, 420), 0, 60)
    through_zone = Mover(3, 4, "yellow disc", 40, 40, (150, 330), (500, 330), 0, 60)
    scene = _scene(up, down, beside, through_zone)
    # "in" is to the left of start -> end as seen on screen: upwards for this line.
    # `beside` passes beyond the line's end (x 560): no crossing.
    assert scene.true_crossings() == {
        ("red rectangle", "crossed_in"): 1,
        ("green disc", "crossed_out"): 1,
    }
    # Bottom-centre anchor: `up` passes x=300 through y 298..394 (anchor = centre + 20).
    assert scene.true_zone_entries() == {"red rectangle": 1, "yellow disc": 1}


def test_made_scenes_keep_boxes_apart_and_one_mover_per_class_in_view() -> None:
    scene = make_scene(seed=5, movers=12, frames=400)
    for frame in range(scene.frames):
        alive = [m for m in scene.movers if m.alive(frame)]
        assert len({m.class_id for m in alive}) == len(alive)
        for i, a in enumerate(alive):
            for b in alive[i + 1 :]:
                assert math.dist(a.center(frame), b.center(frame)) > 40
    line_y = scene.line_start[1]
    for m in scene.movers:
        assert abs(m.start[1] - line_y) > m.height / 2 and abs(m.end[1] - line_y) > m.height / 2


def test_noisy_frames_skip_miss_and_jitter() -> None:
    scene = make_scene(seed=6, movers=12, frames=600)
    frames = noisy_frames(scene, seed=1, jitter_px=1.5, miss=0.1, skip=0.25)
    assert 0.65 < len(frames) / scene.frames < 0.85  # frames dropped, time gaps left
    stamps = [f.timestamp_s for f in frames]
    assert stamps == sorted(stamps) and max(np.diff(stamps)) > 1.5 / scene.fps
    shown = sum(len(f.boxes) for f in frames)
    present = sum(len(f.truth) for f in frames)
    assert 0.85 < shown / present < 0.95  # about 10% missed
    for f in frames:
        truth = dict(f.truth)
        for box in f.boxes:
            c = box["coordinates"]
            assert 75 <= box["confidence"] <= 99
            # The box is its mover's, within a few pixels.
            assert any(
                max(
                    abs(c["left"] - t[0]),
                    abs(c["top"] - t[1]),
                    abs(c["right"] - t[2]),
                    abs(c["bottom"] - t[3]),
                )
                < 9
                for t in truth.values()
            )
