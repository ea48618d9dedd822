"""Ultralytics YOLO and KerasHub exports: detected at load, preprocessed and read
as their own predict does, boxes in the client's image pixels.

The mapping tests use hand-computed numbers; the model tests use generated
graphs with those exports' exact signatures (engines/modelgen/exporter_layouts.py)
on scenes whose objects were drawn at hand-chosen places.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engines.boxes import RawDetections, to_pixels
from engines.config import BoxFormat, OutputConvention
from engines.conventions import resolve_convention
from engines.detector import Detector, load_detector
from engines.errors import InvalidModelConfig, InvalidModelOutput
from engines.images import decode_for_model
from engines.keras_hub import crop_record
from engines.keras_hub import resize_record as keras_resize_record
from engines.metadata import ExportMetadata
from engines.repository import ModelRepository
from engines.resizer import FixedShape, Letterbox
from engines.yolo import letterbox, raw_nms_function, resize_record, ultralytics_convention
from tests.engines.test_conventions import config
from tests.support.exporter_layouts import (
    KERAS_HUB_MODEL,
    LAYOUT_MODELS,
    NAMES,
    SCENES,
    YOLO_MODELS,
    box_problems,
    scene,
    scene_problems,
)

RAW_OUTPUTS = {"output_0": "float32[1, 8, 8400]"}
YOLO_META = ExportMetadata(names=NAMES, imgsz=(640, 640), ultralytics=True)


# --- the mapping, by hand -------------------------------------------------------------


def test_letterbox_pads_grey_114_as_ultralytics() -> None:
    boxed = letterbox(np.full((480, 640, 3), 7, np.uint8), 640, 640)
    assert boxed.shape == (640, 640, 3)
    assert (boxed[:80] == 114).all() and (boxed[80:560] == 7).all() and (boxed[560:] == 114).all()
    # 161 rows of padding: top = round(80.5 - 0.1) = 80, bottom 81.
    boxed = letterbox(np.full((479, 640, 3), 7, np.uint8), 640, 640)
    assert (boxed[:80] == 114).all() and (boxed[80:559] == 7).all() and (boxed[559:] == 114).all()
    # 1920x1080 -> 640x360, 140 rows above and below.
    boxed = letterbox(np.full((1080, 1920, 3), 7, np.uint8), 640, 640)
    assert (boxed[:140] == 114).all() and (boxed[140:500] == 7).all() and (boxed[500:] == 114).all()
    # portrait 480x640 -> 80 columns left and right.
    boxed = letterbox(np.full((640, 480, 3), 7, np.uint8), 640, 640)
    assert (boxed[:, :80] == 114).all() and (boxed[:, 80:560] == 7).all()


@pytest.mark.parametrize(
    ("height", "width", "scale", "offset"),
    [
        (480, 640, (1.0, 1.0), (-80, 0)),
        (1080, 1920, (1 / 3, 1 / 3), (-140, 0)),
        (640, 480, (1.0, 1.0), (0, -80)),
        (320, 320, (2.0, 2.0), (0, 0)),
    ],
)
def test_letterbox_record(height: int, width: int, scale: tuple, offset: tuple) -> None:
    info = resize_record(height, width, 640, 640)
    assert info[0].tolist() == [height, width] and info[1].tolist() == [640, 640]
    assert np.allclose(info[2], scale) and info[3].tolist() == list(offset)


def test_letterbox_record_has_ultralytics_single_gain() -> None:
    """scale_boxes divides both sides by one gain, min(640 / 1000, 640 / 1500) = 0.42667;
    the resized height is round(426.67) = 427 rows, and 427 / 1000 is not the gain."""
    info = resize_record(1000, 1500, 640, 640)
    gain = 640 / 1500
    assert info[2].tolist() == [gain, gain]
    # pad = round((640 - 1000 * gain) / 2 - 0.1) = round(106.57) = 107, as scale_boxes.
    assert info[3].tolist() == [-107, 0]


def _yolo_raw(boxes: list[list[float]], height: int, width: int) -> RawDetections:
    return RawDetections(
        boxes=np.array(boxes, np.float32),
        scores=np.full(len(boxes), 0.9, np.float32),
        classes=np.zeros(len(boxes), np.float32),
        count=len(boxes),
        image_info=resize_record(height, width, 640, 640),
    )


def test_ultralytics_boxes_map_back_to_image_pixels_and_are_clipped() -> None:
    convention = ultralytics_convention("m", RAW_OUTPUTS, YOLO_META, forced=False)
    assert convention is not None and convention.variant == "raw"
    # 1920x1080: gain 1/3, 140 rows of padding on top; (ymin, xmin, ymax, xmax) in input pixels.
    raw = _yolo_raw([[215, 100, 275, 200], [100, 600, 275, 660]], 1080, 1920)
    det = to_pixels(raw, 1920, 1080, NAMES, convention)
    assert np.allclose(det.boxes[0], [300, 225, 600, 405])
    # Reaching into the top padding and past the right edge: clipped, as Ultralytics clips.
    assert np.allclose(det.boxes[1], [1800, 0, 1920, 405])


def test_ultralytics_box_far_past_the_input_is_invalid_model_output() -> None:
    convention = ultralytics_convention("m", RAW_OUTPUTS, YOLO_META, forced=False)
    assert convention is not None
    with pytest.raises(InvalidModelOutput, match="outside"):
        to_pixels(_yolo_raw([[10, 10, 60, 5000]], 480, 640), 640, 480, NAMES, convention)
    unknown = RawDetections(
        boxes=np.array([[10, 10, 60, 60]], np.float32),
        scores=np.array([0.9], np.float32),
        classes=np.array([7], np.float32),
        count=1,
        image_info=resize_record(480, 640, 640, 640),
    )
    with pytest.raises(InvalidModelOutput, match="not in the label map"):
        to_pixels(unknown, 640, 480, NAMES, convention)


@pytest.mark.parametrize(
    ("geometry", "height", "width", "corners"),
    [
        # crop: 1920x1080 into 512x512 keeps the central 1080x1080, from x = 420.
        ("crop", 1080, 1920, (420, 0, 1500, 1080)),
        # pad: 1920x1080 is padded by 420 rows above and below to 1920x1920.
        ("pad", 1080, 1920, (0, -420, 1920, 1500)),
        # pad, portrait 480x640: 80 columns left and right, 640x640.
        ("pad", 640, 480, (-80, 0, 560, 640)),
        # stretch: the whole image, each side its own scale.
        ("stretch", 1080, 1920, (0, 0, 1920, 1080)),
    ],
)
def test_keras_hub_resize_records(geometry: str, height: int, width: int, corners: tuple) -> None:
    """The model input's corners (0, 0) and (512, 512) mapped back, by hand."""
    info = keras_resize_record(geometry, height, width, 512, 512)
    ymin, xmin, ymax, xmax = (np.array([0, 0, 512, 512]) + np.tile(info[3], 2)) / np.tile(
        info[2], 2
    )
    assert np.allclose([xmin, ymin, xmax, ymax], corners)


def test_keras_hub_pad_of_an_odd_difference_is_even_on_both_sides() -> None:
    """Keras pads `start` rows above and below: 640x479 to a square pads 80 + 80 rows (not
    161), so the padded image is 639 high and the row scale 512 / 639."""
    info = keras_resize_record("pad", 479, 640, 512, 512)
    assert np.allclose(info[2], [512 / 639, 512 / 640])
    assert np.allclose(info[3], [-80 * 512 / 639, 0])


def test_keras_hub_centre_crop_record() -> None:
    # 1920x1080 into 512x512: the central 1080x1080, from x = 420.
    info = crop_record(1080, 1920, 512, 512)
    ymin, xmin, ymax, xmax = (np.array([0, 0, 512, 512]) + np.tile(info[3], 2)) / np.tile(
        info[2], 2
    )
    assert np.allclose([xmin, ymin, xmax, ymax], [420, 0, 1500, 1080])
    # portrait 480x640: the central 480x480, from y = 80.
    info = crop_record(640, 480, 512, 512)
    ymin, xmin, ymax, xmax = (np.array([0, 0, 256, 512]) + np.tile(info[3], 2)) / np.tile(
        info[2], 2
    )
    assert np.allclose([xmin, ymin, xmax, ymax], [0, 80, 480, 320])


def test_raw_nms_keeps_the_best_class_per_anchor_and_is_class_wise() -> None:
    import tensorflow as tf

    # Anchors (columns): cx, cy, w, h, score of class 0, score of class 1.
    anchors = [
        [100, 100, 40, 40, 0.9, 0.0],  # kept
        [102, 100, 40, 40, 0.8, 0.0],  # IoU 0.905 with the first, same class: dropped
        [100, 100, 40, 40, 0.3, 0.6],  # best class 1: another class, kept
        [300, 300, 20, 20, 0.0, 0.0],  # score 0: never a box
        [200, 200, 20, 20, 0.5, 0.4],  # class 0 only (no second label)
    ]
    raw = tf.constant(np.array(anchors, np.float32).T[np.newaxis])
    boxes, scores, classes, count = (t.numpy() for t in raw_nms_function(0.7, 10)(raw))
    assert count.tolist() == [3]
    assert np.allclose(scores[0, :3], [0.9, 0.6, 0.5]) and classes[0, :3].tolist() == [0, 1, 0]
    assert np.allclose(boxes[0, :3], [[80, 80, 120, 120], [80, 80, 120, 120], [190, 190, 210, 210]])
    assert (scores[0, 3:] == 0).all()
    _, _, _, count = raw_nms_function(0.95, 10)(raw)
    assert count.numpy().tolist() == [4]


# --- generated exports ----------------------------------------------------------------


@pytest.fixture(scope="module")
def detectors(exporter_layouts_repository: Path) -> dict[str, Detector]:
    repo = ModelRepository(exporter_layouts_repository)
    return {name: load_detector(repo.spec(name), device="cpu") for name in LAYOUT_MODELS}


@pytest.mark.slow
def test_the_folder_alone_is_a_model_read_with_the_exporter_s_defaults(
    detectors: dict[str, Detector], exporter_layouts_repository: Path
) -> None:
    variants = dict(zip(YOLO_MODELS, ("raw", "nms", "end2end"), strict=True))
    for name, detector in detectors.items():
        folder = exporter_layouts_repository / name
        assert not (folder / "config.json").exists()
        assert not (folder / "object-detection.pbtxt").exists()
        assert detector.spec.labels == NAMES
        assert detector.engine.fixed_batch == 1
        convention = detector.engine.convention
        assert convention.box_format is BoxFormat.INPUT_PIXELS
        if name == KERAS_HUB_MODEL:
            assert convention.family is OutputConvention.KERAS_HUB
            assert detector.spec.config.confidence == 0  # its decoder's threshold is baked in
            assert detector.spec.resizer == FixedShape(512, 512)
        else:
            assert convention.family is OutputConvention.ULTRALYTICS
            assert convention.variant == variants[name]
            assert detector.spec.config.confidence == 25  # Ultralytics' predict default
            assert detector.spec.resizer == Letterbox(640, 640)
        assert detector.spec.config.predictions == 300


@pytest.mark.slow
@pytest.mark.parametrize("name", LAYOUT_MODELS)
@pytest.mark.parametrize("size", list(SCENES), ids=lambda s: f"{s[0]}x{s[1]}")
def test_boxes_are_the_drawn_objects_in_image_pixels(
    detectors: dict[str, Detector], name: str, size: tuple[int, int]
) -> None:
    assert scene_problems(detectors[name], size) == []


@pytest.mark.slow
def test_raw_outputs_go_through_class_wise_nms(detectors: dict[str, Detector]) -> None:
    detector = detectors["yolo11_shapes_raw"]
    (boxes,) = detector.detect([scene((640, 480))], [detector.options(0, 300)])
    # Each object: its box, and its box for the next class at a fifth of its score
    # (another class: NMS keeps it); its copy moved 2 px (same class) is dropped.
    expected = SCENES[(640, 480)]
    shifted = [((class_id + 1) % 4, box) for class_id, box in expected]
    assert box_problems(boxes, expected + shifted, 1) == []
    assert sorted(b["confidence"] for b in boxes)[:4] == pytest.approx([20.0] * 4, abs=0.1)
    (best,) = detector.detect([scene((640, 480))], [detector.options(0, 3)])
    assert [b["confidence"] for b in best] == [b["confidence"] for b in boxes[:3]]


@pytest.mark.slow
def test_padding_and_low_score_rows_of_the_300_row_layouts(detectors: dict[str, Detector]) -> None:
    image = scene((640, 480))
    nms = detectors["yolo11_shapes_nms"]
    # nms=True: rows past the real ones have score 0 (and a leftover box): not boxes.
    assert len(nms.detect([image], [nms.options(0, 300)])[0]) == 4
    end2end = detectors["yolo26_shapes_end2end"]
    # end2end: every row is a box; the confidence decides (default 25 %).
    assert len(end2end.detect([image], [end2end.options(0, 300)])[0]) == 300
    assert len(end2end.detect([image])[0]) == 4


@pytest.mark.slow
def test_fixed_batch_exports_are_called_with_exactly_their_batch(
    detectors: dict[str, Detector],
) -> None:
    images = [scene(size) for size in SCENES] + [scene((640, 480), seed=2)]
    for name in ("yolo11_shapes_raw", KERAS_HUB_MODEL):
        detector = detectors[name]
        engine = detector.engine
        calls: list[tuple[int, ...]] = []
        original = engine._call

        def recording(tensor, original=original, calls=calls):  # type: ignore[no-untyped-def]
            calls.append(tuple(tensor.shape))
            return original(tensor)

        engine._call = recording  # type: ignore[method-assign]
        try:
            together = detector.detect(images)
        finally:
            del engine._call
        assert len(calls) == len(images) and all(shape[0] == 1 for shape in calls)
        if name != KERAS_HUB_MODEL:
            assert set(calls) == {(1, 640, 640, 3)}
        assert together == [detector.detect([image])[0] for image in images]


@pytest.mark.slow
def test_a_jpeg_decodes_at_full_resolution_for_the_exporters_pixels(
    detectors: dict[str, Detector],
) -> None:
    """Ultralytics and KerasHub resize the fully decoded image: so does tfstream (a DCT
    scaled decode moves their boxes, docs/model-formats.md); the spec still knows
    the model's resize."""
    out = io.BytesIO()
    Image.fromarray(scene((1920, 1080))).save(out, format="JPEG", quality=95)
    for name, resize in (
        ("yolo11_shapes_raw", Letterbox(640, 640)),
        (KERAS_HUB_MODEL, FixedShape(512, 512)),
    ):
        detector = detectors[name]
        assert detector.resizer is None and detector.spec.resizer == resize
        decoded = decode_for_model(out.getvalue(), resizer=detector.resizer)
        assert decoded.pixels.shape == (1080, 1920, 3)
        (boxes,) = detector.detect([decoded.pixels])
        assert box_problems(boxes, SCENES[(1920, 1080)], 3) == []


# --- refused, with the fix named --------------------------------------------------------


def _copy(source: Path, dest: Path, without: tuple[str, ...] = ()) -> Path:
    shutil.copytree(source, dest, ignore=lambda _d, names: [n for n in names if n in without])
    return dest


def _write_config(folder: Path, **extra: object) -> None:
    fields = {
        "inference_engine_name": "tensorflow2_detection",
        "confidence": 0,
        "predictions": 300,
        "number_of_classes": 4,
        "framework": "tensorflow",
        "type": "detection",
        "network": "yolo11",
        **extra,
    }
    (folder / "config.json").write_text(json.dumps(fields))


@pytest.mark.slow
def test_iou_threshold_in_config_json(exporter_layouts_repository: Path, tmp_path: Path) -> None:
    folder = _copy(exporter_layouts_repository / "yolo11_shapes_raw", tmp_path / "loose")
    _write_config(folder, iou_threshold=0.99)
    detector = load_detector(ModelRepository(tmp_path).spec("loose"), device="cpu")
    assert detector.spec.labels == NAMES  # still from metadata.yaml
    (boxes,) = detector.detect([scene((640, 480))])
    # The copies moved 2 px overlap their object by IoU < 0.99: now they stay.
    assert len(boxes) == 12


def test_iou_threshold_of_the_wrong_type(exporter_layouts_repository: Path, tmp_path: Path) -> None:
    folder = _copy(exporter_layouts_repository / "yolo11_shapes_raw", tmp_path / "typo")
    _write_config(folder, iou_threshold="0.5")
    with pytest.raises(InvalidModelConfig) as info:
        ModelRepository(tmp_path).spec("typo")
    assert info.value.code == "invalid_model_config"
    assert "iou_threshold" in info.value.message and "number" in info.value.message


@pytest.mark.slow
def test_iou_threshold_on_an_export_with_its_nms_inside(
    exporter_layouts_repository: Path, tmp_path: Path
) -> None:
    folder = _copy(exporter_layouts_repository / "yolo11_shapes_nms", tmp_path / "baked")
    _write_config(folder, iou_threshold=0.5)
    with pytest.raises(InvalidModelConfig, match="iou_threshold") as info:
        load_detector(ModelRepository(tmp_path).spec("baked"), device="cpu")
    assert "nms=True" in info.value.message


@pytest.mark.slow
def test_yolo_export_without_metadata_yaml(
    exporter_layouts_repository: Path, tmp_path: Path
) -> None:
    source = exporter_layouts_repository / "yolo11_shapes_raw"
    _copy(source, tmp_path / "bare", without=("metadata.yaml",))
    with pytest.raises(InvalidModelConfig, match=r"metadata\.yaml") as info:
        ModelRepository(tmp_path).spec("bare")
    assert "config.json and object-detection.pbtxt are missing" in info.value.message
    # With config.json and a label map, loading still asks for it: the export is
    # not complete without it.
    folder = _copy(source, tmp_path / "configured", without=("metadata.yaml",))
    _write_config(folder)
    labels = "".join(f"item {{ id: {i} name: '{n}' }}\n" for i, n in NAMES.items())
    (folder / "object-detection.pbtxt").write_text(labels)
    with pytest.raises(InvalidModelConfig, match=r"copy the metadata\.yaml"):
        load_detector(ModelRepository(tmp_path).spec("configured"), device="cpu")


@pytest.mark.slow
def test_a_raw_keras_hub_export_is_refused_with_how_to_export_it(tmp_path: Path) -> None:
    from engines.modelgen.exporter_layouts import export_keras_hub_raw_head

    export_keras_hub_raw_head(tmp_path / "retinanet")
    with pytest.raises(InvalidModelConfig) as info:
        load_detector(ModelRepository(tmp_path).spec("retinanet"), device="cpu")
    message = info.value.message
    assert info.value.code == "invalid_model_config"
    assert "bbox_regression" in message
    assert "keras.export.ExportArchive" in message and "predict_step" in message


def test_output_convention_forced_on_outputs_that_do_not_fit(tmp_path: Path) -> None:
    od_api = {"detection_boxes": "float32[1, 100, 4]", "num_detections": "float32[1]"}
    for forced, fragment in (("ultralytics", "4 + classes"), ("keras_hub", "predict_step")):
        with pytest.raises(InvalidModelConfig, match="output_convention") as info:
            resolve_convention("m", config(output_convention=forced), {}, od_api, tmp_path, None)
        assert fragment in info.value.message
