"""Exporter variants that loaded and then answered wrong boxes (issue 28): KerasHub
converters that pad or stretch, the normalised outputs of Ultralytics' tflite
export, exports of other tasks, contradicting input sizes; and images of
different sizes sharing one YOLO engine call.

Served boxes are checked against where the test drew the objects (hand-chosen,
tests/support/exporter_layouts.py), through generated graphs with the exporters'
exact signatures and metadata.yaml (engines/modelgen/exporter_layouts.py).
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

from engines.convention_types import Convention
from engines.detector import Detector, load_detector
from engines.errors import InvalidModelConfig
from engines.export_folder import load_config_and_labels, model_input_size
from engines.metadata import ExportMetadata, read_metadata
from engines.repository import ModelRepository
from engines.resizer import FixedShape, Letterbox
from engines.yolo import ultralytics_convention
from tests.engines.test_conventions import config, resolve
from tests.support.exporter_layouts import (
    NAMES,
    SCENES,
    TOLERANCE,
    box_problems,
    scene,
    scene_problems,
)
from tests.support.models import REPO_ROOT, build_repository

KERAS_HUB_VARIANTS = ("keras_hub_shapes_pad", "keras_hub_shapes_stretch", "keras_hub_shapes_xyxy")
NORMALIZED = ("yolo11_shapes_raw_normalized", "yolo11_shapes_nms_normalized")
VARIANTS = (*KERAS_HUB_VARIANTS, *NORMALIZED, "yolo11_shapes_raw_b4")
RAW_8 = {"output_0": "float32[1, 8, 8400]"}
YOLO_META = ExportMetadata(names=NAMES, imgsz=(640, 640), ultralytics=True, task="detect")


@pytest.fixture(scope="module")
def variants(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_repository(tmp_path_factory.mktemp("variants"), VARIANTS)


@pytest.fixture(scope="module")
def detectors(variants: Path) -> dict[str, Detector]:
    repo = ModelRepository(variants)
    return {name: load_detector(repo.spec(name), device="cpu") for name in VARIANTS}


def _copy(source: Path, dest: Path) -> Path:
    shutil.copytree(source, dest)
    return dest


def _edit_metadata(folder: Path, old: str, new: str) -> None:
    path = folder / "metadata.yaml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


# --- 1. KerasHub: the converter's geometry, from metadata.yaml ------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", (*KERAS_HUB_VARIANTS, *NORMALIZED))
@pytest.mark.parametrize("size", list(SCENES), ids=lambda s: f"{s[0]}x{s[1]}")
def test_variant_boxes_are_the_drawn_objects_in_image_pixels(
    detectors: dict[str, Detector], name: str, size: tuple[int, int]
) -> None:
    """KerasHub's pad, stretch and xyxy converters, and the saved_model of
    Ultralytics' tflite export (normalised boxes: the code before served them ~1 px
    wide at (0, 0))."""
    # Padding shrinks the image into 512 px more than cropping: a pixel more of slack.
    assert scene_problems(detectors[name], size, 2 if name.endswith("pad") else 0) == []


@pytest.mark.slow
def test_the_variant_is_read_from_metadata(detectors: dict[str, Detector]) -> None:
    for name in NORMALIZED:  # from metadata.yaml's export args
        assert detectors[name].engine.convention.normalized is True
    assert detectors["keras_hub_shapes_pad"].engine.convention.variant == "pad"
    assert detectors["keras_hub_shapes_pad"].spec.resizer == Letterbox(512, 512)
    assert detectors["keras_hub_shapes_stretch"].engine.convention.variant == "stretch"
    assert detectors["keras_hub_shapes_stretch"].spec.resizer == FixedShape(512, 512)
    assert detectors["keras_hub_shapes_xyxy"].engine.convention.variant == "crop"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("old", "new", "fragment"),
    [
        # The old recipe: imgsz only, no flags.
        ("crop_to_aspect_ratio: false\npad_to_aspect_ratio: true\n", "", "crop_to_aspect_ratio"),
        ("bounding_box_format: yxyx\n", "", "bounding_box_format"),
        ("image_size: [512, 512]\n", "", "image_size"),
        ("bounding_box_format: yxyx", "bounding_box_format: center_xywh", "center_xywh"),
        ("crop_to_aspect_ratio: false", "crop_to_aspect_ratio: true", "both true"),
    ],
)
def test_keras_hub_metadata_that_does_not_say_its_geometry_is_refused_naming_the_fix(
    variants: Path, tmp_path: Path, old: str, new: str, fragment: str
) -> None:
    folder = _copy(variants / "keras_hub_shapes_pad", tmp_path / "kh")
    _edit_metadata(folder, old, new)
    with pytest.raises(InvalidModelConfig) as info:
        load_detector(ModelRepository(tmp_path).spec("kh"), device="cpu")
    assert fragment in info.value.message
    assert "metadata.yaml" in info.value.message


# --- 2. normalised Ultralytics outputs --------------------------------------------------


@pytest.mark.slow
def test_normalised_outputs_without_export_args_are_told_by_their_range(tmp_path: Path) -> None:
    from engines.modelgen.exporter_layouts import export_yolo_shapes

    export_yolo_shapes(tmp_path / "bare", "raw", normalized=True, args=False)
    export_yolo_shapes(tmp_path / "pixels", "raw", normalized=False, args=False)
    repo = ModelRepository(tmp_path)
    for name in ("bare", "pixels"):
        detector = load_detector(repo.spec(name), device="cpu")
        assert detector.engine.convention.normalized is None  # metadata.yaml cannot tell
        (boxes,) = detector.detect([scene((640, 480))])
        assert box_problems(boxes, SCENES[(640, 480)], 1) == []
        assert detector.engine._adapter.normalized is (name == "bare")


def test_export_args_say_which_format_wrote_the_saved_model() -> None:
    def meta(args: dict) -> ExportMetadata:
        return ExportMetadata(names=NAMES, ultralytics=True, export_args=args)

    assert meta({"batch": 1, "int8": False, "keras": False, "nms": False}).normalized_boxes is False
    assert meta({"batch": 1, "half": False, "int8": False, "fraction": 1.0}).normalized_boxes
    assert meta({}).normalized_boxes is None


# --- 3. task and shape checks -----------------------------------------------------------


@pytest.mark.parametrize("task", ["segment", "pose", "obb", "classify"])
def test_an_export_of_another_task_is_refused_by_name(tmp_path: Path, task: str) -> None:
    path = tmp_path / "metadata.yaml"
    path.write_text(f"task: {task}\nstride: 32\nnames: {{0: a}}\nimgsz: [640, 640]\n")
    with pytest.raises(InvalidModelConfig, match=f"task '{task}'") as info:
        read_metadata(path)
    assert "detect" in info.value.message


def test_raw_rows_must_be_4_plus_the_class_names() -> None:
    """A segment head has 4 + C + 32 rows; a COCO model with the shapes' names 84."""
    assert ultralytics_convention("m", RAW_8, YOLO_META, forced=False) is not None
    for rows in (84, 4 + 4 + 32):
        with pytest.raises(InvalidModelConfig, match=f"has {rows} rows"):
            ultralytics_convention(
                "m", {"output_0": f"float32[1, {rows}, 8400]"}, YOLO_META, forced=False
            )


def test_the_ultralytics_reading_needs_ultralytics_metadata_unless_forced() -> None:
    keras_like = ExportMetadata(names=NAMES, imgsz=(640, 640))
    with pytest.raises(InvalidModelConfig, match="not Ultralytics'") as info:
        ultralytics_convention("m", RAW_8, keras_like, forced=False)
    assert "task: detect" in info.value.message and "output_convention" in info.value.message
    forced = ultralytics_convention("m", RAW_8, keras_like, forced=True)
    assert isinstance(forced, Convention) and forced.variant == "raw"


def test_a_hand_written_detect_metadata_gets_ultralytics_predict_defaults(tmp_path: Path) -> None:
    (tmp_path / "metadata.yaml").write_text(
        "task: detect\nimgsz: [640, 640]\nnames: {0: a, 1: b}\n"
    )
    meta = read_metadata(tmp_path / "metadata.yaml")
    assert meta.ultralytics
    model_config, labels = load_config_and_labels(tmp_path, meta=meta)
    assert model_config.confidence == 25 and model_config.predictions == 300
    assert labels == {0: "a", 1: "b"}


@pytest.mark.parametrize(
    "extra",
    [{"box_format": "normalized"}, {"output_names": {"detection_boxes": "output_0"}}],
)
def test_config_json_fields_an_exporter_ignores_are_refused(tmp_path: Path, extra: dict) -> None:
    from engines.conventions import resolve_convention

    field = next(iter(extra))
    with pytest.raises(InvalidModelConfig, match=f"sets {field}") as info:
        resolve_convention("m", config(**extra), {}, RAW_8, tmp_path, YOLO_META)
    assert f"remove {field}" in info.value.message
    keras = {"boxes": "", "confidence": "", "labels": "", "num_detections": ""}
    kh_meta = ExportMetadata(
        names=NAMES,
        imgsz=(512, 512),
        crop_to_aspect_ratio=True,
        pad_to_aspect_ratio=False,
        bounding_box_format="yxyx",
    )
    with pytest.raises(InvalidModelConfig, match=f"sets {field}"):
        resolve_convention("m", config(**extra), {}, keras, tmp_path, kh_meta)
    # The Object Detection API reads them as before.
    assert resolve({"out": "float32[1, 100, 4]"} | _od_api(), tmp_path, **_od_fields(extra))


def _od_api() -> dict[str, str]:
    return {
        "detection_boxes": "float32[1, 100, 4]",
        "detection_scores": "float32[1, 100]",
        "detection_classes": "float32[1, 100]",
        "num_detections": "float32[1]",
    }


def _od_fields(extra: dict) -> dict:
    return {"box_format": "normalized"} if "box_format" in extra else {}


# --- 4. one input size ------------------------------------------------------------------


def test_one_function_decides_the_input_size_and_refuses_a_contradiction() -> None:
    assert model_input_size("m", config(), YOLO_META, (640, 640)) == (640, 640)
    assert model_input_size("m", config(input_size=[640, 640]), YOLO_META) == (640, 640)
    assert model_input_size("m", config(), None, (None, None)) is None
    with pytest.raises(InvalidModelConfig) as info:
        model_input_size("m", config(input_size=[480, 640]), YOLO_META)
    assert "[640, 640]" in info.value.message and "[480, 640]" in info.value.message
    assert "imgsz" in info.value.message and "input_size" in info.value.message
    with pytest.raises(InvalidModelConfig, match=r"signature's input is \[320, 320\]"):
        model_input_size("m", config(), YOLO_META, (320, 320))


@pytest.mark.slow
def test_a_yolo_export_whose_metadata_contradicts_its_signature_is_refused(
    tmp_path: Path,
) -> None:
    from engines.modelgen.exporter_layouts import export_yolo_shapes

    folder = export_yolo_shapes(tmp_path / "y", "raw")
    _edit_metadata(folder, "imgsz:\n- 640\n- 640", "imgsz:\n- 320\n- 320")
    with pytest.raises(InvalidModelConfig) as info:
        load_detector(ModelRepository(tmp_path).spec("y"), device="cpu")
    assert "[640, 640]" in info.value.message and "[320, 320]" in info.value.message


def test_config_json_input_size_against_metadata_is_refused_at_spec(tmp_path: Path) -> None:
    folder = tmp_path / "y"
    folder.mkdir()
    (folder / "metadata.yaml").write_text(
        "task: detect\nstride: 32\nimgsz: [640, 640]\nnames: {0: a}\n"
    )
    (folder / "saved_model.pb").write_bytes(b"")
    (folder / "config.json").write_text(
        '{"inference_engine_name": "tensorflow2_detection", "confidence": 25, "predictions": 5,'
        ' "number_of_classes": 1, "framework": "tensorflow", "type": "detection",'
        ' "network": "yolo", "input_size": [480, 640]}'
    )
    with pytest.raises(InvalidModelConfig, match=r"\[480, 640\]"):
        ModelRepository(tmp_path).spec("y")


# --- shape ------------------------------------------------------------------------------


@pytest.mark.slow
def test_yolo_images_of_different_sizes_share_one_engine_call(
    detectors: dict[str, Detector],
) -> None:
    """Batch 4: three cameras' frames (4:3, 16:9, 3:4) go in one call, padded once; the
    old grouping by original shape made three calls, each padded to 4."""
    detector = detectors["yolo11_shapes_raw_b4"]
    engine = detector.engine
    assert engine.fixed_batch == 4
    calls: list[tuple[int, ...]] = []
    original = engine._call

    def recording(tensor):  # type: ignore[no-untyped-def]
        calls.append(tuple(tensor.shape))
        return original(tensor)

    engine._call = recording  # type: ignore[method-assign]
    try:
        sizes = list(SCENES)
        together = detector.detect([scene(size) for size in sizes])
    finally:
        del engine._call
    assert calls == [(4, 640, 640, 3)]
    for size, boxes in zip(sizes, together, strict=True):
        assert box_problems(boxes, SCENES[size], TOLERANCE[size]) == []


def _imports(module: str) -> set[str]:
    tree = ast.parse((REPO_ROOT / "engines" / f"{module}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def test_no_import_circle_and_metadata_parses_only() -> None:
    for reader in ("yolo", "keras_hub"):
        assert "engines.conventions" not in _imports(reader)
    assert {"engines.config", "engines.labels", "engines.resizer"}.isdisjoint(_imports("metadata"))
    # Ultralytics' numbers live in yolo.py only.
    import engines.metadata

    assert not hasattr(engines.metadata, "MAX_DETECTIONS")
