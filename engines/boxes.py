"""From raw detector output to the old API's box format, checked on every call.

The wire format is integer pixels (left, top, right, bottom) of the image as
the client sent it, x against the width and y against the height (the old
code clamped x against the height). What the model's numbers mean is its
`Convention` (engines/conventions.py). They are checked against it on every
call: a model that breaks it (normalised boxes far past [0, 1], NaN,
right < left, a class id not in the label map, num_detections past its
arrays) gets `InvalidModelOutput` for the request, never a box. Clamping such
a box into the image would hide a model read with the wrong convention, which
is how a server returns boxes that look fine and are wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypedDict

import numpy as np

from engines.config import BoxFormat
from engines.convention_types import OD_API, Convention
from engines.errors import InvalidModelOutput

#: Rounding a normalised coordinate may do past [0, 1], as a fraction of the image.
NORMALIZED_TOLERANCE = 1e-3
#: The same for coordinates in pixels of the model input.
PIXEL_TOLERANCE = 1.0
#: A score may be this much past [0, 1]; a class id this far from an integer.
SCORE_TOLERANCE = 1e-3
CLASS_TOLERANCE = 1e-3


@dataclass(frozen=True)
class RawDetections:
    """One image's detector output, as the model returned it.

    boxes: float [N, 4] (ymin, xmin, ymax, xmax) in the unit of the model's
    convention; scores: float [N] in [0, 1]; classes: [N] class ids as the label
    map numbers them (1-based for the OD API, 0-based for Ultralytics and KerasHub; any
    numeric dtype). Only the first `count` rows are real; the rest is the
    model's padding. image_info: Model Garden's [4, 2] resize record
    ([[orig_h, orig_w], [input_h, input_w], [y_scale, x_scale], [y_offset, x_offset]]).
    """

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    count: int
    image_info: np.ndarray | None = None


@dataclass(frozen=True)
class PixelDetections:
    """The real rows of `RawDetections`, checked, in original-image pixels.

    boxes: float64 [N, 4] (left, top, right, bottom) inside the image;
    scores: float64 [N]; classes: int64 [N], each in the label map.
    """

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray


def _bad(problem: str, convention: Convention) -> InvalidModelOutput:
    return InvalidModelOutput(
        f"{problem} (read as {convention.describe()}; if that is not what the model "
        "outputs, set output_convention / box_format in its config.json)"
    )


def _rows(raw: RawDetections, convention: Convention) -> int:
    rows = min(len(raw.boxes), len(raw.scores), len(raw.classes))
    if not 0 <= raw.count <= rows:
        raise _bad(f"num_detections is {raw.count} but the outputs hold {rows} rows", convention)
    return int(raw.count)


def _resize_record(
    raw: RawDetections, width: int, height: int, convention: Convention
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scale, offset, model canvas in original pixels), each (y, x), from image_info."""
    if raw.image_info is None:
        raise _bad("no image_info output", convention)
    info = np.asarray(raw.image_info, np.float64)
    if info.shape != (4, 2) or not np.isfinite(info).all():
        raise _bad(f"image_info is not 4x2 finite numbers: {info.tolist()}", convention)
    original, canvas, scale, offset = info
    if np.abs(original - (height, width)).max() > 0.5:
        raise _bad(
            f"image_info says the image is {original[0]:g}x{original[1]:g} (h x w), "
            f"it is {height}x{width}",
            convention,
        )
    if (scale <= 0).any() or (canvas <= 0).any():
        raise _bad(f"image_info holds a scale or size <= 0: {info.tolist()}", convention)
    return scale, offset, (canvas + offset) / scale


def to_pixels(
    raw: RawDetections,
    width: int,
    height: int,
    labels: dict[int, str],
    convention: Convention = OD_API,
    shown: tuple[int, int] | None = None,
) -> PixelDetections:
    """Check the real rows against `convention` and map them to image pixels.

    `width` and `height` are the image the model was given; `shown` the
    (width, height) of the image as the client sent it, where that image was
    decoded smaller (`engines.images.decode_for_model`): boxes are checked in
    the first and scaled, unrounded, to the second.

    The only clamping left is to the image's edges, of coordinates that are
    legitimately past them: rounding, the padding Model Garden adds to fit
    the model's input, the letterbox padding of an Ultralytics export (a box
    may reach into either), or the margin a convention allows regressed boxes
    (`Convention.margin`: that many input sizes past the model input).

    Raises:
        InvalidModelOutput: the outputs break the convention; the message says how.
    """
    count = _rows(raw, convention)
    boxes = np.asarray(raw.boxes[:count], np.float64).reshape(-1, 4)
    scores = np.asarray(raw.scores[:count], np.float64).reshape(-1)
    classes = np.asarray(raw.classes[:count], np.float64).reshape(-1)
    if not (np.isfinite(boxes).all() and np.isfinite(scores).all() and np.isfinite(classes).all()):
        raise _bad("NaN or infinite values among the detections", convention)
    if ((scores < -SCORE_TOLERANCE) | (scores > 1 + SCORE_TOLERANCE)).any():
        raise _bad(f"scores outside [0, 1]: {scores.min():g}..{scores.max():g}", convention)
    class_ids = np.rint(classes).astype(np.int64)
    if (np.abs(classes - class_ids) > CLASS_TOLERANCE).any():
        raise _bad(f"class ids that are not integers: {sorted(set(classes.tolist()))}", convention)
    unknown = sorted(set(class_ids.tolist()) - set(labels))
    if unknown:
        raise _bad(f"class ids {unknown} are not in the label map ({sorted(labels)})", convention)
    size = np.array([height, width], np.float64)
    if convention.box_format is BoxFormat.NORMALIZED:
        # Model Garden normalises by the original size, but its boxes may reach
        # into the padding of its input: its canvas can be larger than the image.
        canvas = (
            _resize_record(raw, width, height, convention)[2]
            if convention.uses_image_info
            else size
        )
        tolerance = NORMALIZED_TOLERANCE * size
        yx = boxes * np.tile(size, 2)
        low_edge = np.zeros(2)
    else:
        scale, offset, canvas = _resize_record(raw, width, height, convention)
        tolerance = PIXEL_TOLERANCE / scale
        yx = (boxes + np.tile(offset, 2)) / np.tile(scale, 2)
        # Where the model input starts in the image (< 0: letterbox padding);
        # regressed boxes (margin > 0) may reach that many input sizes past it.
        reach = convention.margin * np.asarray(raw.image_info, np.float64)[1] / scale
        low_edge = np.minimum(offset / scale, 0.0) - reach
        canvas = canvas + reach
    tol = np.tile(tolerance, 2)
    low, high = np.tile(low_edge, 2) - tol, np.tile(canvas, 2) + tol
    outside = (yx < low) | (yx > high)
    if outside.any():
        row = int(np.argwhere(outside)[0][0])
        raise _bad(
            f"box {boxes[row].tolist()} (ymin, xmin, ymax, xmax) lies outside the "
            f"{'image' if canvas is size else 'model input'}",
            convention,
        )
    inverted = (yx[:, 2] < yx[:, 0] - tolerance[0]) | (yx[:, 3] < yx[:, 1] - tolerance[1])
    if inverted.any():
        row = int(np.argmax(inverted))
        raise _bad(f"box {boxes[row].tolist()} has right < left or bottom < top", convention)
    ymin, xmin, ymax, xmax = yx.T
    ltrb = np.stack([xmin, ymin, np.maximum(xmax, xmin), np.maximum(ymax, ymin)], axis=1)
    ltrb = np.clip(ltrb, 0.0, np.array([width, height, width, height], np.float64))
    if shown is not None and shown != (width, height):
        ltrb *= np.array([shown[0] / width, shown[1] / height] * 2, np.float64)
    return PixelDetections(ltrb, scores, class_ids)


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
    convention: Convention = OD_API,
    shown: tuple[int, int] | None = None,
) -> list[Box]:
    """Check, filter by confidence, keep the best `predictions`, convert to pixel boxes.

    Boxes are sorted by score, best first, whatever order the model used.

    Raises:
        InvalidModelOutput: see `to_pixels`.
    """
    det = to_pixels(raw, width, height, labels, convention, shown)
    if len(det.scores) == 0 or options.predictions <= 0:
        return []
    percent = det.scores * 100.0
    order = np.argsort(-percent, kind="stable")
    keep = [i for i in order if percent[i] >= options.confidence][: options.predictions]
    out: list[Box] = []
    for i in keep:
        left, top, right, bottom = (round(float(v)) for v in det.boxes[i])
        class_id = int(det.classes[i])
        out.append(
            {
                "ObjectClassName": labels[class_id],
                "ObjectClassId": class_id,
                "confidence": round(float(percent[i]), 2),
                "coordinates": {"left": left, "top": top, "right": right, "bottom": bottom},
            }
        )
    return out
