import numpy as np

from engines.boxes import Options, RawDetections, to_boxes

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


def test_coordinates_are_clamped_to_the_image() -> None:
    det = raw([[-0.2, -0.1, 1.3, 1.5]], [0.9], [1])
    (box,) = to_boxes(det, width=640, height=480, labels=LABELS, options=Options(0, 10))
    assert box["coordinates"] == {"left": 0, "top": 0, "right": 640, "bottom": 480}


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


def test_count_larger_than_the_arrays_is_cut_to_the_arrays() -> None:
    det = raw([[0, 0, 1, 1]], [0.7], [1], count=50)
    assert len(to_boxes(det, 10, 10, LABELS, Options(0, 100))) == 1


def test_unknown_class_id_is_named_by_number() -> None:
    det = raw([[0, 0, 1, 1]], [0.7], [7.0])
    (box,) = to_boxes(det, 10, 10, LABELS, Options(0, 10))
    assert box["ObjectClassName"] == "7" and box["ObjectClassId"] == 7
