"""From raw detector output to the old API's box format.

Conventions, fixed here once: the models emit boxes as normalised
(ymin, xmin, ymax, xmax) in [0, 1]; the wire format is integer pixels
(left, top, right, bottom) of the image as the client sent it, x against the
width and y against the height (the old code clamped x against the height).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypedDict

import numpy as np


@dataclass(frozen=True)
class RawDetections:
    """One image's detector output, as the model returned it.

    boxes: float32 [N, 4] normalised (ymin, xmin, ymax, xmax);
    scores: float32 [N] in [0, 1]; classes: [N] 1-based class ids (any numeric dtype).
    Only the first `count` rows are real; the rest is the model's padding.
    """

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    count: int

    def valid(self) -> RawDetections:
        """The first `count` rows, never past what the arrays hold."""
        n = max(0, min(int(self.count), len(self.scores), len(self.boxes), len(self.classes)))
        return RawDetections(self.boxes[:n], self.scores[:n], self.classes[:n], n)


@dataclass(frozen=True)
class Options:
    """Per-request filtering, defaulting to the model's config.json."""

    confidence: float
    """Minimum score in percent (0-100)."""
    predictions: int
    """Maximum number of boxes, best first."""


class Coordinates(TypedDict):
    """Integer pixels of the image as the client sent it."""

    left: int
    top: int
    right: int
    bottom: int


class Box(TypedDict):
    """One detection as the old API's `bounding-boxes` list holds it (the JSON keys are its)."""

    ObjectClassName: str
    ObjectClassId: int
    confidence: float
    """Score in percent, two decimals."""
    coordinates: Coordinates


def to_boxes(
    raw: RawDetections,
    width: int,
    height: int,
    labels: dict[int, str],
    options: Options,
) -> list[Box]:
    """Filter by confidence, keep the best `predictions`, convert to pixel boxes.

    Boxes are sorted by score, best first, whatever order the model used; a
    class id missing from the label map is named by its number.
    """
    det = raw.valid()
    if det.count == 0 or options.predictions <= 0:
        return []
    percent = det.scores.astype(np.float64) * 100.0
    order = np.argsort(-percent, kind="stable")
    keep = [i for i in order if percent[i] >= options.confidence][: options.predictions]
    boxes = np.clip(det.boxes.astype(np.float64), 0.0, 1.0)
    out: list[Box] = []
    for i in keep:
        ymin, xmin, ymax, xmax = boxes[i]
        class_id = round(float(det.classes[i]))
        out.append(
            {
                "ObjectClassName": labels.get(class_id, str(class_id)),
                "ObjectClassId": class_id,
                "confidence": round(float(percent[i]), 2),
                "coordinates": {
                    "left": _to_pixel(min(xmin, xmax), width),
                    "top": _to_pixel(min(ymin, ymax), height),
                    "right": _to_pixel(max(xmin, xmax), width),
                    "bottom": _to_pixel(max(ymin, ymax), height),
                },
            }
        )
    return out


def _to_pixel(normalised: float, size: int) -> int:
    """A normalised coordinate as a pixel in [0, size], the image's edge included."""
    return int(min(max(round(normalised * size), 0), size))
