"""Synthetic test images for the shapes detector, with pixel ground truth.

An image is a light, nearly grey, slightly noisy background (with a gentle
brightness gradient), 0..4 saturated objects (at most one per class of
`SHAPE_CLASSES`, no overlaps, >= 40 px) and a few achromatic distractors
(dark grey lines) that must not be detected.

The classes are defined here (not next to the detector in `shapes.py`) so
that drawing images does not import TensorFlow.

Ground-truth boxes are ``(left, top, right, bottom)`` in pixels with exclusive
right/bottom edges, so ``right - left`` is the object's width in pixels and
``left / width`` .. ``right / width`` is the normalised box a detector should
emit.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

#: (width, height) of the written test images; varied on purpose.
DEFAULT_SIZES: tuple[tuple[int, int], ...] = (
    (320, 240),
    (640, 480),
    (500, 375),
    (375, 500),
    (800, 600),
)
MIN_OBJECT_SIZE = 40
"""Smallest object side in pixels."""
OBJECT_GAP = 12
"""Minimum free pixels between two objects (and distractors)."""
BORDER_MARGIN = 4
"""Minimum free pixels between an object and the image border."""
GROUND_TRUTH_FILE = "ground_truth.json"

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class ShapeClass:
    """One class of the shapes detector and of the label map."""

    id: int
    """1-based label id, as emitted in ``detection_classes``."""
    name: str
    """Label map ``name`` (no spaces)."""
    display_name: str
    """Label map ``display_name``: the label users see."""
    colour: str
    """``"red"``, ``"green"``, ``"blue"`` or ``"yellow"`` (see `_object_colour`)."""
    shape: str
    """``"rectangle"`` or ``"disc"``."""
    chroma: tuple[tuple[float, float, float], tuple[float, float, float]]
    """Two RGB weight vectors; the class feature is the min of the two dot products."""

    @property
    def expected_fill(self) -> float:
        """Mask area / box area of an ideal object: 1 for rectangles, pi/4 for discs."""
        return 1.0 if self.shape == "rectangle" else math.pi / 4.0


SHAPE_CLASSES: tuple[ShapeClass, ...] = (
    ShapeClass(1, "red_rectangle", "red rectangle", "red", "rectangle", ((1, -1, 0), (1, 0, -1))),
    ShapeClass(2, "green_disc", "green disc", "green", "disc", ((-1, 1, 0), (0, 1, -1))),
    ShapeClass(
        3, "blue_rectangle", "blue rectangle", "blue", "rectangle", ((-1, 0, 1), (0, -1, 1))
    ),
    ShapeClass(4, "yellow_disc", "yellow disc", "yellow", "disc", ((1, 0, -1), (0, 1, -1))),
)


def _object_colour(rng: np.random.Generator, cls: ShapeClass) -> tuple[int, int, int]:
    """A saturated RGB colour for `cls`, jittered but far from the other classes.

    The ranges keep every other class's chroma feature below ~40 (its floor is 60).
    """

    def u(low: int, high: int) -> int:
        return int(rng.integers(low, high + 1))

    if cls.colour == "red":
        return u(190, 240), u(10, 60), u(10, 60)
    if cls.colour == "green":
        return u(10, 45), u(160, 220), u(10, 45)
    if cls.colour == "blue":
        return u(10, 60), u(10, 60), u(180, 240)
    if cls.colour == "yellow":
        red = u(215, 250)
        return red, red - u(0, 20), u(0, 50)  # green close to red: not "red" to the detector
    raise ValueError(f"no colour range for {cls.colour!r}")


def _overlaps(box: Box, others: Sequence[Box], gap: int) -> bool:
    left, top, right, bottom = box
    return any(
        left < o_right + gap
        and o_left < right + gap
        and top < o_bottom + gap
        and o_top < bottom + gap
        for o_left, o_top, o_right, o_bottom in others
    )


def _place(
    rng: np.random.Generator,
    width: int,
    height: int,
    box_w: int,
    box_h: int,
    taken: Sequence[Box],
    tries: int = 50,
) -> Box | None:
    """A free position for a ``box_w x box_h`` box, or None after `tries` attempts."""
    max_left = width - BORDER_MARGIN - box_w
    max_top = height - BORDER_MARGIN - box_h
    if max_left < BORDER_MARGIN or max_top < BORDER_MARGIN:
        return None
    for _ in range(tries):
        left = int(rng.integers(BORDER_MARGIN, max_left + 1))
        top = int(rng.integers(BORDER_MARGIN, max_top + 1))
        box = (left, top, left + box_w, top + box_h)
        if not _overlaps(box, taken, OBJECT_GAP):
            return box
    return None


def _object_size(
    rng: np.random.Generator, cls: ShapeClass, width: int, height: int
) -> tuple[int, int]:
    """Width, height in pixels: discs are circles, rectangles any aspect up to 2.5:1."""
    largest = max(MIN_OBJECT_SIZE, int(min(width, height) * 0.45))
    if cls.shape == "disc":
        side = int(rng.integers(MIN_OBJECT_SIZE, largest + 1))
        return side, side
    return (
        int(rng.integers(MIN_OBJECT_SIZE, largest + 1)),
        int(rng.integers(MIN_OBJECT_SIZE, largest + 1)),
    )


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """``[H, W, 3]`` float: light grey, a small tint and a brightness gradient."""
    base = rng.uniform(195.0, 235.0)
    tint = rng.uniform(-6.0, 6.0, size=3)
    gy, gx = rng.uniform(-10.0, 10.0, size=2)
    ys = np.linspace(-0.5, 0.5, height)[:, None, None]
    xs = np.linspace(-0.5, 0.5, width)[None, :, None]
    return np.broadcast_to(base + tint + gy * ys + gx * xs, (height, width, 3)).astype(np.float32)


def draw_shapes_image(
    rng: np.random.Generator,
    width: int,
    height: int,
    max_objects: int = len(SHAPE_CLASSES),
    empty_probability: float = 0.1,
    distractors: bool = True,
) -> tuple[Image.Image, list[dict[str, Any]]]:
    """Draw one RGB test image and return it with its ground truth.

    Returns:
        The image and one dict per object: ``class_id`` (1-based label id),
        ``name`` (label map name), ``label`` (display name), ``box``
        ``(left, top, right, bottom)`` in pixels, right/bottom exclusive.
    """
    count = 0 if rng.random() < empty_probability else int(rng.integers(1, max_objects + 1))
    chosen = rng.choice(len(SHAPE_CLASSES), size=min(count, len(SHAPE_CLASSES)), replace=False)
    canvas = Image.fromarray(np.zeros((height, width, 3), np.uint8))
    draw = ImageDraw.Draw(canvas)
    painted = Image.new("L", (width, height), 0)
    paint = ImageDraw.Draw(painted)
    taken: list[Box] = []
    truth: list[dict[str, Any]] = []
    for index in chosen:
        cls = SHAPE_CLASSES[int(index)]
        box = _place(rng, width, height, *_object_size(rng, cls, width, height), taken)
        if box is None:
            continue
        taken.append(box)
        truth.append(_paint_object(draw, paint, cls, box, _object_colour(rng, cls)))
    if distractors:
        for _ in range(int(rng.integers(0, 3))):
            length = int(rng.integers(30, max(31, min(width, height) // 2)))
            thick = int(rng.integers(2, 5))
            horizontal = rng.random() < 0.5
            size = (length, thick) if horizontal else (thick, length)
            box = _place(rng, width, height, *size, taken)
            if box is None:
                continue
            taken.append(box)
            grey = int(rng.integers(30, 130))
            corners = (box[0], box[1], box[2] - 1, box[3] - 1)
            draw.rectangle(corners, fill=(grey, grey, grey))
            paint.rectangle(corners, fill=255)
    return _compose(rng, canvas, painted), truth


def draw_scene(
    rng: np.random.Generator, width: int, height: int, objects: Sequence[tuple[ShapeClass, Box]]
) -> tuple[Image.Image, list[dict[str, Any]]]:
    """Draw the given objects at the given boxes, in the style of `draw_shapes_image`.

    For frames of a scene that moves (the demo's cameras): the caller chooses
    where each object is; colours, background and noise are drawn as for the
    test images, so the shapes detector finds the boxes. Returns the image and
    its ground truth (same format as `draw_shapes_image`).
    """
    canvas = Image.fromarray(np.zeros((height, width, 3), np.uint8))
    draw = ImageDraw.Draw(canvas)
    painted = Image.new("L", (width, height), 0)
    paint = ImageDraw.Draw(painted)
    truth = [_paint_object(draw, paint, cls, box, _object_colour(rng, cls)) for cls, box in objects]
    return _compose(rng, canvas, painted), truth


def _paint_object(
    draw: ImageDraw.ImageDraw,
    paint: ImageDraw.ImageDraw,
    cls: ShapeClass,
    box: Box,
    colour: tuple[int, int, int],
) -> dict[str, Any]:
    """Paint one object on the canvas and its mask; return its ground truth."""
    left, top, right, bottom = box
    corners = (left, top, right - 1, bottom - 1)  # PIL boxes are inclusive
    if cls.shape == "disc":
        draw.ellipse(corners, fill=colour)
        paint.ellipse(corners, fill=255)
    else:
        draw.rectangle(corners, fill=colour)
        paint.rectangle(corners, fill=255)
    return {"class_id": cls.id, "name": cls.name, "label": cls.display_name, "box": box}


def _compose(rng: np.random.Generator, canvas: Image.Image, painted: Image.Image) -> Image.Image:
    """Painted pixels over the background, plus sensor noise."""
    width, height = canvas.size
    drawn = np.asarray(canvas).astype(np.float32)
    mask = np.asarray(painted)[:, :, np.newaxis] > 0
    pixels = np.where(mask, drawn, _background(rng, width, height))
    pixels += rng.normal(0.0, rng.uniform(2.0, 5.0), size=pixels.shape)
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "RGB")


def write_test_images(
    out_dir: Path,
    count: int = 60,
    seed: int = 0,
    formats: Sequence[str] = ("jpg", "png"),
    sizes: Sequence[tuple[int, int]] = DEFAULT_SIZES,
    jpeg_quality: int = 90,
) -> dict[str, list[dict[str, Any]]]:
    """Draw `count` images and save each in every format, plus ``ground_truth.json``.

    Files are ``shapes_0000.jpg``, ``shapes_0000.png``, ...; image i has size
    ``sizes[i % len(sizes)]``. The same seed always gives the same images.

    Returns:
        The ground truth as written: file name -> list of objects (see
        `draw_shapes_image`; boxes as lists in the JSON).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    truth: dict[str, list[dict[str, Any]]] = {}
    for i in range(count):
        width, height = sizes[i % len(sizes)]
        image, objects = draw_shapes_image(rng, width, height)
        for fmt in formats:
            name = f"shapes_{i:04d}.{fmt}"
            if fmt.lower() in ("jpg", "jpeg"):
                image.save(out_dir / name, format="JPEG", quality=jpeg_quality)
            else:
                image.save(out_dir / name)
            truth[name] = [dict(obj, box=list(obj["box"])) for obj in objects]
    (out_dir / GROUND_TRUTH_FILE).write_text(json.dumps(truth, indent=1), encoding="utf-8")
    return truth


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two boxes in the same corner order and units.

    Works for ``(left, top, right, bottom)`` and ``(ymin, xmin, ymax, xmax)``
    alike, as long as both boxes use the same one.
    """
    inter_0 = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    inter_1 = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = inter_0 * inter_1
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
