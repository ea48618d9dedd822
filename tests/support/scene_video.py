"""A scene of shapes on known paths (engines/modelgen/paths.py) rendered as frames
that the shapes detector sees: the video of the tracking tests against a broker."""

from __future__ import annotations

import io

import numpy as np

from engines.modelgen.images import SHAPE_CLASSES, draw_scene
from engines.modelgen.paths import Scene

_BY_ID = {c.id: c for c in SHAPE_CLASSES}


def render_frames(scene: Scene, seed: int) -> list[bytes]:
    """One JPEG per frame of the scene, every mover in view drawn at its true box."""
    rng = np.random.default_rng(seed)
    out = []
    for index in range(scene.frames):
        objects = []
        for m in scene.movers:
            if m.alive(index):
                left, top, right, bottom = (round(v) for v in m.box(index))
                objects.append((_BY_ID[m.class_id], (left, top, right, bottom)))
        picture, _ = draw_scene(rng, scene.width, scene.height, objects)
        buffer = io.BytesIO()
        picture.save(buffer, format="JPEG", quality=90)
        out.append(buffer.getvalue())
    return out
