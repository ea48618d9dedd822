"""The generated models: their interface is the TF Object Detection API's, and the
shapes detector really detects (run directly through TensorFlow here)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageDraw

from engines.detector import load_detector
from engines.modelgen.export import export_shapes_tf2
from engines.modelgen.generate import (
    BENCH_EXPORTERS,
    DEMO_NAMES,
    generate_models,
    write_atomically,
)
from engines.modelgen.images import (
    GROUND_TRUTH_FILE,
    MIN_OBJECT_SIZE,
    SHAPE_CLASSES,
    box_iou,
    draw_shapes_image,
    write_test_images,
)
from engines.repository import ModelRepository

REQUIRED = ("detection_boxes", "detection_scores", "detection_classes", "num_detections")
IMAGE_COUNT = 60  # per format
MIN_IOU = 0.9
MIN_TRUE_SCORE = 0.8
MAX_FALSE_SCORE = 0.5

Detect = Callable[[np.ndarray], dict[str, np.ndarray]]


@pytest.fixture(scope="session")
def generated_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The models this module checks, written once per test session (the Model
    Garden exports are checked in tests/engines/test_model_garden.py)."""
    out = tmp_path_factory.mktemp("models")
    names = [*DEMO_NAMES, *BENCH_EXPORTERS]
    written = generate_models(out, names)
    assert [p.name for p in written] == names
    return out


@pytest.fixture(scope="session")
def shapes_images(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("shapes_images")
    truth = write_test_images(out, count=IMAGE_COUNT, seed=1234, formats=("jpg", "png"))
    return out, truth


@pytest.fixture(scope="session")
def open_batch_tf2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_shapes_tf2(tmp_path_factory.mktemp("variants") / "shapes_open", open_batch=True)


def _tf2_detect(model_dir: Path) -> Detect:
    model = tf.saved_model.load(str(model_dir))

    def detect(image: np.ndarray) -> dict[str, np.ndarray]:
        return {k: v.numpy() for k, v in model(image[np.newaxis]).items()}

    return detect


def _load_frozen(path: Path) -> Callable[..., dict[str, tf.Tensor]]:
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(path.read_bytes())
    wrapped = tf.compat.v1.wrap_function(
        lambda: tf.compat.v1.import_graph_def(graph_def, name=""), []
    )
    fetches = {name: wrapped.graph.get_tensor_by_name(f"{name}:0") for name in REQUIRED}
    return wrapped.prune(feeds=wrapped.graph.get_tensor_by_name("image_tensor:0"), fetches=fetches)


def _tf1_detect(model_dir: Path) -> Detect:
    run = _load_frozen(model_dir / "frozen_inference_graph.pb")

    def detect(image: np.ndarray) -> dict[str, np.ndarray]:
        return {k: v.numpy() for k, v in run(tf.constant(image[np.newaxis])).items()}

    return detect


def _label_map(path: Path) -> list[tuple[int, str, str]]:
    text = path.read_text(encoding="utf-8")
    items = re.findall(
        r"item\s*\{\s*id:\s*(\d+)\s*name:\s*'([^']*)'\s*display_name:\s*'([^']*)'\s*\}", text
    )
    assert text.count("item") == len(items)
    return [(int(i), name, display) for i, name, display in items]


# --------------------------------------------------------------------------- layout


@pytest.mark.parametrize(
    ("name", "engine", "classes", "weights"),
    [
        ("shapes_tf2", "tensorflow2_detection", 4, "saved_model.pb"),
        ("shapes_tf1", "tensorflow_detection", 4, "frozen_inference_graph.pb"),
        ("ssd_mobilenet_v2_bench", "tensorflow2_detection", 90, "saved_model.pb"),
        ("ssd_mobilenet_v2_bench_b1", "tensorflow2_detection", 90, "saved_model.pb"),
    ],
)
def test_model_folder_layout(
    generated_models_dir: Path, name: str, engine: str, classes: int, weights: str
) -> None:
    folder = generated_models_dir / name
    config = json.loads((folder / "config.json").read_text())
    assert config == {
        "inference_engine_name": engine,
        "confidence": 60,
        "predictions": 15,
        "number_of_classes": classes,
        "framework": "tensorflow",
        "type": "detection",
        "network": config["network"],
        # The input size: the shapes models in config.json, the SSD in its pipeline.config.
        **({"input_size": [480, 640]} if name.startswith("shapes") else {}),
    }
    assert (folder / "pipeline.config").is_file() == name.startswith("ssd_mobilenet_v2_bench")
    labels = _label_map(folder / "object-detection.pbtxt")
    assert [i for i, _, _ in labels] == list(range(1, classes + 1))
    assert (folder / weights).is_file()
    if weights == "saved_model.pb":
        assert (folder / "variables" / "variables.index").is_file()
    assert not [p.name for p in generated_models_dir.iterdir() if p.name.startswith(".")]


def test_shapes_label_map(generated_models_dir: Path) -> None:
    labels = _label_map(generated_models_dir / "shapes_tf2" / "object-detection.pbtxt")
    assert labels == [
        (1, "red_rectangle", "red rectangle"),
        (2, "green_disc", "green disc"),
        (3, "blue_rectangle", "blue rectangle"),
        (4, "yellow_disc", "yellow disc"),
    ]
    assert labels == [(c.id, c.name, c.display_name) for c in SHAPE_CLASSES]


def test_bench_label_map_is_coco(generated_models_dir: Path) -> None:
    labels = _label_map(generated_models_dir / "ssd_mobilenet_v2_bench" / "object-detection.pbtxt")
    assert labels[0] == (1, "person", "person")
    assert labels[9] == (10, "traffic_light", "traffic light")
    assert labels[89] == (90, "toothbrush", "toothbrush")


# --------------------------------------------------------------------------- TF2 interface


def test_tf2_is_callable_like_od_api_export(generated_models_dir: Path) -> None:
    model = tf.saved_model.load(str(generated_models_dir / "shapes_tf2"))
    image = np.full((1, 240, 320, 3), 210, np.uint8)
    image[0, 50:120, 60:200] = (220, 30, 30)  # one red rectangle
    out = model(tf.constant(image))
    assert set(REQUIRED) <= set(out)
    assert {"raw_detection_boxes", "raw_detection_scores", "detection_multiclass_scores"} <= set(
        out
    )
    for key in (*REQUIRED, "raw_detection_boxes", "raw_detection_scores"):
        assert out[key].dtype == tf.float32, key
    assert out["detection_boxes"].shape == (1, 100, 4)
    assert out["detection_scores"].shape == (1, 100)
    assert out["detection_classes"].shape == (1, 100)
    assert out["num_detections"].shape == (1,)
    assert out["num_detections"].numpy().tolist() == [1.0]
    assert out["detection_classes"].numpy()[0, 0] == 1.0
    assert out["detection_scores"].numpy()[0, 0] > 0.95
    np.testing.assert_allclose(
        out["detection_boxes"].numpy()[0, 0], [50 / 240, 60 / 320, 120 / 240, 200 / 320], atol=1e-6
    )
    # Padding rows are zeros, as in real exports.
    assert not out["detection_scores"].numpy()[0, 1:].any()
    assert not out["detection_boxes"].numpy()[0, 1:].any()


@pytest.mark.parametrize(("variant", "batch"), [("fixed", 1), ("open", None)])
def test_tf2_serving_default_signature(
    generated_models_dir: Path, open_batch_tf2: Path, variant: str, batch: int | None
) -> None:
    folder = generated_models_dir / "shapes_tf2" if variant == "fixed" else open_batch_tf2
    signature = tf.saved_model.load(str(folder)).signatures["serving_default"]
    args, kwargs = signature.structured_input_signature
    assert args == ()
    assert list(kwargs) == ["input_tensor"]
    spec = kwargs["input_tensor"]
    assert spec.dtype == tf.uint8
    assert spec.shape.as_list() == [batch, None, None, 3]
    assert set(REQUIRED) <= set(signature.structured_outputs)
    out = signature(input_tensor=tf.zeros([1, 64, 64, 3], tf.uint8))
    assert out["num_detections"].numpy().tolist() == [0.0]


def test_tf2_fixed_batch_refuses_batch_2(generated_models_dir: Path) -> None:
    model = tf.saved_model.load(str(generated_models_dir / "shapes_tf2"))
    with pytest.raises((ValueError, TypeError)):
        model(tf.zeros([2, 64, 64, 3], tf.uint8))


def test_tf2_open_batch_equals_one_by_one(open_batch_tf2: Path) -> None:
    model = tf.saved_model.load(str(open_batch_tf2))
    rng = np.random.default_rng(7)
    images = np.stack(
        [np.asarray(draw_shapes_image(rng, 320, 240, empty_probability=0.0)[0]) for _ in range(3)]
    )
    batched = model(images)
    assert batched["detection_boxes"].shape == (3, 100, 4)
    for i in range(3):
        single = model(images[i : i + 1])
        for key in REQUIRED:
            np.testing.assert_allclose(batched[key].numpy()[i], single[key].numpy()[0], atol=1e-6)
        assert single["num_detections"].numpy()[0] >= 1


# --------------------------------------------------------------------------- TF1 interface


def test_tf1_frozen_graph_interface(generated_models_dir: Path) -> None:
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(
        (generated_models_dir / "shapes_tf1" / "frozen_inference_graph.pb").read_bytes()
    )
    nodes = {node.name: node for node in graph_def.node}
    assert nodes["image_tensor"].op == "Placeholder"
    assert tf.dtypes.as_dtype(nodes["image_tensor"].attr["dtype"].type) == tf.uint8
    dims = [d.size for d in nodes["image_tensor"].attr["shape"].shape.dim]
    assert dims == [-1, -1, -1, 3]
    assert not [n.name for n in graph_def.node if n.op in ("VarHandleOp", "ReadVariableOp")]
    run = _load_frozen(generated_models_dir / "shapes_tf1" / "frozen_inference_graph.pb")
    out = run(tf.zeros([2, 120, 160, 3], tf.uint8))
    assert out["detection_boxes"].shape == (2, 100, 4)
    assert out["detection_scores"].shape == (2, 100)
    assert out["detection_classes"].shape == (2, 100)
    assert out["num_detections"].numpy().tolist() == [0.0, 0.0]


# --------------------------------------------------------------------------- accuracy


def _evaluate(detect: Detect, folder: Path, truth: dict[str, Any], fmt: str) -> dict[str, Any]:
    """Match every ground-truth object to the best same-class detection."""
    ious: list[float] = []
    true_scores: list[float] = []
    false_scores: list[float] = []
    failures: list[str] = []
    names = sorted(n for n in truth if n.endswith(f".{fmt}"))
    for name in names:
        with Image.open(folder / name) as image:
            pixels = np.asarray(image.convert("RGB"))
        height, width = pixels.shape[:2]
        out = detect(pixels)
        count = int(out["num_detections"][0])
        found = [
            (
                int(out["detection_classes"][0, j]),
                float(out["detection_scores"][0, j]),
                out["detection_boxes"][0, j],
            )
            for j in range(count)
        ]
        assert not out["detection_scores"][0, count:].any()
        matched: set[int] = set()
        for obj in truth[name]:
            left, top, right, bottom = obj["box"]
            expected = (top / height, left / width, bottom / height, right / width)
            candidates = [
                (box_iou(expected, box), j)
                for j, (cls, _, box) in enumerate(found)
                if cls == obj["class_id"]
            ]
            iou, j = max(candidates, default=(0.0, -1))
            ious.append(iou)
            if j >= 0:
                matched.add(j)
                true_scores.append(found[j][1])
            if iou < MIN_IOU or j < 0 or found[j][1] < MIN_TRUE_SCORE:
                failures.append(f"{name}: {obj['label']} IoU {iou:.3f}")
        false_scores += [score for j, (_, score, _) in enumerate(found) if j not in matched]
    return {
        "images": len(names),
        "ious": ious,
        "true_scores": true_scores,
        "false_scores": false_scores,
        "failures": failures,
    }


@pytest.mark.parametrize("fmt", ["jpg", "png"])
@pytest.mark.parametrize("export", ["shapes_tf2", "shapes_tf1"])
def test_shapes_detector_finds_every_object(
    generated_models_dir: Path, shapes_images: tuple[Path, dict[str, Any]], export: str, fmt: str
) -> None:
    folder, truth = shapes_images
    model_dir = generated_models_dir / export
    detect = _tf2_detect(model_dir) if export == "shapes_tf2" else _tf1_detect(model_dir)
    result = _evaluate(detect, folder, truth, fmt)
    assert result["images"] >= 50
    assert len(result["ious"]) >= 100  # enough objects for the numbers to mean something
    assert result["failures"] == []
    assert min(result["ious"]) >= MIN_IOU
    assert min(result["true_scores"]) > MIN_TRUE_SCORE
    assert [s for s in result["false_scores"] if s > MAX_FALSE_SCORE] == []


def test_shapes_detector_checks_the_shape(generated_models_dir: Path) -> None:
    """Right colour, wrong shape (red disc, green square) is not a detection."""
    image = Image.new("RGB", (320, 240), (215, 215, 215))
    draw = ImageDraw.Draw(image)
    draw.ellipse((30, 30, 129, 129), fill=(220, 30, 30))
    draw.rectangle((180, 60, 259, 139), fill=(30, 190, 30))
    out = _tf2_detect(generated_models_dir / "shapes_tf2")(np.asarray(image))
    assert out["detection_scores"][0].max() < 0.2
    assert out["raw_detection_scores"].shape == (1, 4, 5)


@pytest.mark.parametrize(("width", "height"), [(64, 64), (1280, 960)])
def test_shapes_detector_any_size(generated_models_dir: Path, width: int, height: int) -> None:
    rng = np.random.default_rng(3)
    image, objects = draw_shapes_image(rng, width, height, empty_probability=0.0)
    out = _tf2_detect(generated_models_dir / "shapes_tf2")(np.asarray(image))
    assert int(out["num_detections"][0]) == len(objects)


# --------------------------------------------------------------------------- bench model


def test_bench_runs_batch_8_in_one_call(generated_models_dir: Path) -> None:
    folder = generated_models_dir / "ssd_mobilenet_v2_bench"
    model = tf.saved_model.load(str(folder))
    spec = model.signatures["serving_default"].structured_input_signature[1]["input_tensor"]
    assert spec.shape.as_list() == [None, None, None, 3]
    rng = np.random.default_rng(11)
    images = np.stack([np.asarray(draw_shapes_image(rng, 640, 480)[0]) for _ in range(8)])
    out = {k: v.numpy() for k, v in model(images).items()}
    assert out["detection_boxes"].shape == (8, 100, 4)
    assert out["detection_scores"].shape == (8, 100)
    assert out["num_detections"].shape == (8,)
    assert out["raw_detection_boxes"].shape == (8, 1917, 4)
    assert out["raw_detection_scores"].shape == (8, 1917, 91)
    scores = out["detection_scores"]
    assert (np.diff(scores, axis=1) <= 0).all()
    assert ((scores > 0.5).sum(axis=1) >= 1).all()  # something passes a confidence filter
    assert ((scores > 0.5).sum(axis=1) < 100).any()  # ... but not everything
    classes = out["detection_classes"]
    assert classes.min() >= 1 and classes.max() <= 90
    boxes = out["detection_boxes"]
    assert boxes.min() >= 0.0 and boxes.max() <= 1.0
    assert (boxes[..., 2] >= boxes[..., 0]).all() and (boxes[..., 3] >= boxes[..., 1]).all()
    # Different images give different detections: the weights do real work.
    assert not np.allclose(scores[0], scores[1])


def test_bench_batch_1_export_takes_one_image_and_has_the_same_weights(
    generated_models_dir: Path,
) -> None:
    """Most Object Detection API exports take a fixed batch of 1: the fixed-batch
    benchmark rows need the bench model exported that way, computing the same."""
    open_batch = tf.saved_model.load(str(generated_models_dir / "ssd_mobilenet_v2_bench"))
    one = tf.saved_model.load(str(generated_models_dir / "ssd_mobilenet_v2_bench_b1"))
    signature = one.signatures["serving_default"]
    spec = signature.structured_input_signature[1]["input_tensor"]
    assert spec.shape.as_list() == [1, None, None, 3]
    rng = np.random.default_rng(5)
    image = np.asarray(draw_shapes_image(rng, 640, 480)[0])[np.newaxis]
    ours = {k: v.numpy() for k, v in signature(input_tensor=tf.constant(image)).items()}
    theirs = {k: v.numpy() for k, v in open_batch(image).items()}
    np.testing.assert_allclose(ours["detection_scores"], theirs["detection_scores"], atol=1e-5)
    np.testing.assert_allclose(ours["detection_boxes"], theirs["detection_boxes"], atol=1e-5)
    spec_b1 = ModelRepository(generated_models_dir).spec("ssd_mobilenet_v2_bench_b1")
    assert load_detector(spec_b1, "cpu").engine.fixed_batch == 1  # as the pipeline sees it


def test_bench_weights_are_saved_variables(generated_models_dir: Path) -> None:
    prefix = generated_models_dir / "ssd_mobilenet_v2_bench" / "variables" / "variables"
    shapes = [shape for _, shape in tf.train.list_variables(str(prefix)) if shape]
    params = sum(int(np.prod(shape)) for shape in shapes)
    assert params > 15_000_000  # MobileNetV2 + SSD heads with 3x3 predictors
    assert [3, 3, 3, 32] in shapes  # the stem
    assert [1, 1, 320, 1280] in shapes  # the last MobileNetV2 layer


# --------------------------------------------------------------------------- generation


def _mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


def test_generation_skips_existing(generated_models_dir: Path) -> None:
    before = _mtimes(generated_models_dir)
    names = [*DEMO_NAMES, *BENCH_EXPORTERS]
    assert generate_models(generated_models_dir, names) == []
    assert _mtimes(generated_models_dir) == before


def test_generation_overwrite_and_repair(tmp_path: Path) -> None:
    target = tmp_path / "shapes_tf1"
    assert generate_models(tmp_path, ["shapes_tf1"]) == [target]
    first = (target / "frozen_inference_graph.pb").stat().st_ino
    assert generate_models(tmp_path, ["shapes_tf1"], overwrite=True) == [target]
    assert (target / "frozen_inference_graph.pb").stat().st_ino != first
    (target / "config.json").unlink()  # incomplete: regenerated even without overwrite
    assert generate_models(tmp_path, ["shapes_tf1"]) == [target]
    assert (target / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shapes_tf1"]


def test_generation_rejects_unknown_names(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown model"):
        generate_models(tmp_path, ["shapes_tf1", "nope"])
    assert list(tmp_path.iterdir()) == []


def test_interrupted_build_leaves_nothing(tmp_path: Path) -> None:
    def broken(folder: Path) -> None:
        (folder / "saved_model.pb").write_bytes(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomically(tmp_path / "m", broken, overwrite=False)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- images


@pytest.fixture(scope="module")
def drawn() -> Iterator[list[tuple[Image.Image, list[dict[str, Any]]]]]:
    rng = np.random.default_rng(99)
    yield [draw_shapes_image(rng, 320 + 40 * (i % 5), 240) for i in range(200)]


def test_drawn_ground_truth_is_valid(drawn: list[tuple[Image.Image, list[dict[str, Any]]]]) -> None:
    counts = [len(objects) for _, objects in drawn]
    assert 0 in counts and max(counts) == len(SHAPE_CLASSES)
    for image, objects in drawn:
        ids = [o["class_id"] for o in objects]
        assert len(ids) == len(set(ids))
        boxes = [o["box"] for o in objects]
        for i, (left, top, right, bottom) in enumerate(boxes):
            assert 0 <= left < right <= image.width and 0 <= top < bottom <= image.height
            assert min(right - left, bottom - top) >= MIN_OBJECT_SIZE
            assert all(box_iou(boxes[i], other) == 0.0 for other in boxes[i + 1 :])
    sizes = {o["box"][2] - o["box"][0] for _, objects in drawn for o in objects}
    assert len(sizes) > 20


def test_write_test_images_is_reproducible(tmp_path: Path) -> None:
    first = write_test_images(tmp_path / "a", count=3, seed=5)
    second = write_test_images(tmp_path / "b", count=3, seed=5)
    assert first == second
    assert json.loads((tmp_path / "a" / GROUND_TRUTH_FILE).read_text()) == first
    assert sorted(first) == [f"shapes_{i:04d}.{f}" for i in range(3) for f in ("jpg", "png")]
    assert (tmp_path / "a" / "shapes_0000.png").read_bytes() == (
        tmp_path / "b" / "shapes_0000.png"
    ).read_bytes()
