"""Raw outputs to wire boxes, and the per-call checks that refuse a wrong convention."""

import numpy as np
import pytest

from engines.boxes import Options, RawDetections, to_boxes
from engines.config import BoxFormat, OutputConvention
from engines.conventions import OUTPUT_NAMES, Convention
from engines.errors import InvalidModelOutput

LABELS = {1: "cat", 2: "dog"}


def raw(
    boxes: list[list[float]], scores: list[float], classes: list[float], count: int | None = None
) -> RawDetections:
    return RawDetections(
        boxes=np.array(boxes, dtype=np.float32).reshape(-1, 4),
        scores=np.array(scores, dtype=np.float32),
        classes=np.array(classes, dtype=np.float32),
        count=len(scores) if count is None else count,
    )


def test_pixel_coordinates_use_width_for_x_and_height_for_y() -> None:
    det = raw([[0.1, 0.2, 0.5, 0.9]], [0.8], [2])
    (box,) = to_boxes(det, width=200, height=100, labels=LABELS, options=Options(50, 10))
    assert box == {
        "ObjectClassName": "dog",
        "ObjectClassId": 2,
        "confidence": 80.0,
        "coordinates": {"left": 40, "top": 10, "right": 180, "bottom": 50},
    }


def test_rounding_past_the_edges_is_clamped_to_the_image() -> None:
    det = raw([[-0.0004, -0.0002, 1.0003, 1.0009]], [0.9], [1])
    (box,) = to_boxes(det, width=640, height=480, labels=LABELS, options=Options(0, 10))
    assert box["coordinates"] == {"left": 0, "top": 0, "right": 640, "bottom": 480}


@pytest.mark.parametrize(
    ("boxes", "scores", "classes", "count", "problem"),
    [
        ([[-0.2, -0.1, 1.3, 1.5]], [0.9], [1], 1, "outside the image"),
        ([[12.0, 30.0, 80.0, 140.0]], [0.9], [1], 1, "outside the image"),  # pixels
        ([[0.1, 0.5, 0.2, 0.4]], [0.9], [1], 1, "right < left"),
        ([[0.3, 0.1, 0.2, 0.4]], [0.9], [1], 1, "bottom < top"),
        ([[np.nan, 0.1, 0.2, 0.4]], [0.9], [1], 1, "NaN"),
        ([[0.1, 0.1, 0.2, 0.4]], [np.inf], [1], 1, "NaN or infinite"),
        ([[0.1, 0.1, 0.2, 0.4]], [1.7], [1], 1, "scores outside"),
        ([[0.1, 0.1, 0.2, 0.4]], [0.7], [7], 1, "not in the label map"),
        ([[0.1, 0.1, 0.2, 0.4]], [0.7], [1.5], 1, "not integers"),
        ([[0, 0, 1, 1]], [0.7], [1], 50, "num_detections is 50"),
        ([[0, 0, 1, 1]], [0.7], [1], -1, "num_detections is -1"),
    ],
)
def test_outputs_that_break_the_convention_are_refused_never_clamped(
    boxes: list[list[float]], scores: list[float], classes: list[float], count: int, problem: str
) -> None:
    det = raw(boxes, scores, classes, count)
    with pytest.raises(InvalidModelOutput, match=problem) as info:
        to_boxes(det, 640, 480, LABELS, Options(0, 10))
    assert info.value.code == "invalid_model_output"
    assert "config.json" in info.value.message  # says what to change


def test_a_bad_row_fails_the_image_even_below_the_confidence_filter() -> None:
    det = raw([[0.1, 0.1, 0.2, 0.2], [0.1, 0.1, 3.0, 0.2]], [0.9, 0.01], [1, 2])
    with pytest.raises(InvalidModelOutput):
        to_boxes(det, 640, 480, LABELS, Options(50, 10))


def test_confidence_filter_is_inclusive_percent_and_best_first() -> None:
    det = raw([[0, 0, 1, 1]] * 4, [0.5, 0.9, 0.6, 0.59], [1, 2, 1, 2])
    boxes = to_boxes(det, 10, 10, LABELS, Options(confidence=60, predictions=10))
    assert [b["confidence"] for b in boxes] == [90.0, 60.0]


def test_predictions_caps_the_count() -> None:
    det = raw([[0, 0, 1, 1]] * 5, [0.9, 0.8, 0.7, 0.6, 0.5], [1] * 5)
    assert len(to_boxes(det, 10, 10, LABELS, Options(0, 3))) == 3
    assert to_boxes(det, 10, 10, LABELS, Options(0, 0)) == []


def test_fewer_detections_than_predictions_never_reads_padding() -> None:
    # Padding rows hold high scores here: reading them would be visible.
    det = raw([[0, 0, 1, 1]] * 4, [0.7, 0.99, 0.99, 0.99], [1, 2, 2, 2], count=1)
    boxes = to_boxes(det, 10, 10, LABELS, Options(0, 100))
    assert [b["confidence"] for b in boxes] == [70.0]


# -- Model Garden: boxes in pixels of the resized input, image_info maps them back ------

MODEL_GARDEN_PIXELS = Convention(
    OutputConvention.MODEL_GARDEN, BoxFormat.INPUT_PIXELS, {k: k for k in OUTPUT_NAMES}
)
MODEL_GARDEN_NORMALIZED = Convention(
    OutputConvention.MODEL_GARDEN, BoxFormat.NORMALIZED, {k: k for k in OUTPUT_NAMES}
)


def image_info(height: int, width: int, side: int = 128) -> np.ndarray:
    """What Model Garden's resize_and_crop_image records for a `side` x `side` input."""
    scale = min(side / height, side / width)
    scaled = (round(height * scale), round(width * scale))
    return np.array(
        [[height, width], [side, side], [scaled[0] / height, scaled[1] / width], [0, 0]],
        np.float32,
    )


LANDSCAPE_INFO = image_info(480, 640)  # scale 0.2: the image fills 96 x 128 of the input


def one_detection(
    box: list[float], class_id: int = 2, info: np.ndarray | None = LANDSCAPE_INFO
) -> RawDetections:
    """One Model Garden detection (score 0.8) of a 640x480 image in a 128x128 input."""
    return RawDetections(
        boxes=np.array([box], np.float32),
        scores=np.array([0.8], np.float32),
        classes=np.array([class_id], np.int32),
        count=1,
        image_info=info,
    )


def test_model_garden_pixel_boxes_are_mapped_to_the_original_image() -> None:
    info = image_info(480, 640)  # scale 0.2, the image fills 96 x 128 of the input
    det = one_detection([10.0, 20.0, 50.0, 100.0], info=info)
    (box,) = to_boxes(det, 640, 480, LABELS, Options(0, 10), MODEL_GARDEN_PIXELS)
    assert box["coordinates"] == {"left": 100, "top": 50, "right": 500, "bottom": 250}
    assert box["ObjectClassName"] == "dog"


def test_model_garden_box_reaching_into_the_padding_is_cut_at_the_image_edge() -> None:
    # The 640x480 image fills rows 0..96 of the 128x128 input; rows 96..128 are padding.
    det = one_detection([80.0, 0.0, 128.0, 128.0], class_id=1)
    (box,) = to_boxes(det, 640, 480, LABELS, Options(0, 10), MODEL_GARDEN_PIXELS)
    assert box["coordinates"] == {"left": 0, "top": 400, "right": 640, "bottom": 480}
    # Normalised the same way by the exporter: past 1.0 where the input was padding.
    det = one_detection([400 / 480, 0.0, 640 / 480, 1.0], class_id=1)
    (box,) = to_boxes(det, 640, 480, LABELS, Options(0, 10), MODEL_GARDEN_NORMALIZED)
    assert box["coordinates"] == {"left": 0, "top": 400, "right": 640, "bottom": 480}


def test_model_garden_pixel_boxes_read_as_normalized_are_refused() -> None:
    det = one_detection([10.0, 20.0, 50.0, 100.0])
    with pytest.raises(InvalidModelOutput, match="outside the model input"):
        to_boxes(det, 640, 480, LABELS, Options(0, 10), MODEL_GARDEN_NORMALIZED)


@pytest.mark.parametrize(
    ("info", "problem"),
    [
        (None, "no image_info"),
        (image_info(300, 640), "says the image is 300x640"),
        (np.array([[480, 640], [128, 128], [0, 0], [0, 0]], np.float32), "<= 0"),
        (np.full((4, 2), np.nan, np.float32), "finite"),
    ],
)
def test_a_broken_image_info_is_refused(info: np.ndarray | None, problem: str) -> None:
    det = one_detection([10.0, 20.0, 50.0, 100.0], info=info)
    with pytest.raises(InvalidModelOutput, match=problem):
        to_boxes(det, 640, 480, LABELS, Options(0, 10), MODEL_GARDEN_PIXELS)
