"""Scenes with objects at hand-chosen places, for the Ultralytics / KerasHub layouts.

The generated models (engines/modelgen/exporter_layouts.py) find the drawn
objects in their model input, so the box a test expects is where it drew the
object, in the image's own pixels: chosen here by hand, not computed by the
code under test.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

#: The Ultralytics-layout models and the KerasHub one (metadata.yaml only, no config.json).
YOLO_MODELS = ("yolo11_shapes_raw", "yolo11_shapes_nms", "yolo26_shapes_end2end")
KERAS_HUB_MODEL = "keras_hub_shapes"
LAYOUT_MODELS = (*YOLO_MODELS, KERAS_HUB_MODEL)
#: The class names of metadata.yaml, by the 0-based id the models emit.
NAMES = {0: "red rectangle", 1: "green disc", 2: "blue rectangle", 3: "yellow disc"}

#: (width, height) -> [(class id, (left, top, right, bottom))]: landscape 4:3,
#: full HD 16:9 and portrait 3:4. Every object lies in the image's central
#: square, so the KerasHub model's centre crop keeps it whole.
SCENES: dict[tuple[int, int], list[tuple[int, tuple[int, int, int, int]]]] = {
    (640, 480): [
        (0, (100, 100, 200, 180)),
        (1, (300, 200, 380, 280)),
        (2, (420, 60, 520, 140)),
        (3, (150, 300, 250, 400)),
    ],
    (1920, 1080): [
        (0, (480, 150, 780, 405)),
        (1, (900, 450, 1140, 690)),
        (2, (1200, 135, 1440, 315)),
        (3, (540, 675, 840, 975)),
    ],
    (480, 640): [
        (0, (60, 100, 180, 220)),
        (1, (240, 150, 330, 240)),
        (2, (300, 300, 420, 380)),
        (3, (80, 400, 180, 500)),
    ],
}
#: Coordinates may be off by one model-input pixel, in image pixels (1920 wide: 3).
TOLERANCE = {(640, 480): 1, (1920, 1080): 3, (480, 640): 1}


def scene(size: tuple[int, int], seed: int = 1) -> np.ndarray:
    """uint8 [H, W, 3] RGB of `SCENES[size]`, drawn like the shapes test images."""
    from engines.modelgen.images import SHAPE_CLASSES, draw_scene

    objects = [(SHAPE_CLASSES[class_id], box) for class_id, box in SCENES[size]]
    picture, _ = draw_scene(np.random.default_rng(seed), *size, objects)
    return np.asarray(picture, dtype=np.uint8)


def scene_png(size: tuple[int, int], seed: int = 1) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(scene(size, seed)).save(out, format="PNG")
    return out.getvalue()


def scene_problems(detector: Any, size: tuple[int, int], slack: int = 0) -> list[str]:
    """`box_problems` of what `detector` (an engines.detector.Detector) serves for
    `scene(size)`, within `TOLERANCE[size]` plus `slack` pixels."""
    (boxes,) = detector.detect([scene(size)])
    return box_problems(boxes, SCENES[size], TOLERANCE[size] + slack)


def box_problems(
    boxes: list[dict[str, Any]],
    expected: list[tuple[int, tuple[int, int, int, int]]],
    tolerance: int,
) -> list[str]:
    """Served boxes (wire format) against expected (class id, box) one to one; [] when equal."""
    problems = []
    left = list(boxes)
    for class_id, box in expected:
        match = next(
            (
                b
                for b in left
                if b["ObjectClassId"] == class_id
                and b["ObjectClassName"] == NAMES[class_id]
                and all(
                    abs(b["coordinates"][k] - v) <= tolerance
                    for k, v in zip(("left", "top", "right", "bottom"), box, strict=True)
                )
            ),
            None,
        )
        if match is None:
            problems.append(f"no box of class {class_id} at {box}")
        else:
            left.remove(match)
    problems += [f"unexpected box {b}" for b in left]
    return problems
