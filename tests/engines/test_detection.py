"""The engines on real generated TensorFlow models, in both export formats."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from engines.boxes import Options
from engines.detector import Detector, load_detector
from engines.drawing import draw_boxes
from engines.errors import InvalidModelConfig, ModelLoadFailed, ModelNotFound
from engines.images import decode_for_model, decode_image
from engines.repository import ModelRepository
from tests.support.models import iou, match_truth, run_validate

Truth = dict[str, list[dict[str, Any]]]


@pytest.fixture(scope="module")
def detectors(model_repository: Path) -> dict[str, Detector]:
    repo = ModelRepository(model_repository)
    return {name: load_detector(repo.spec(name)) for name in ("shapes_tf2", "shapes_tf1")}


@pytest.mark.parametrize("model", ["shapes_tf2", "shapes_tf1"])
@pytest.mark.parametrize("ext", ["jpg", "png"])
def test_shapes_detector_finds_every_drawn_object(
    detectors: dict[str, Detector], shapes_images: tuple[Path, Truth], model: str, ext: str
) -> None:
    folder, truth = shapes_images
    names = sorted(n for n in truth if n.endswith(ext))
    assert len(names) >= 50
    assert sum(len(truth[n]) for n in names) >= 100  # enough objects to mean something
    problems: dict[str, list[str]] = {}
    for name in names:
        (boxes,) = detectors[model].detect([decode_image((folder / name).read_bytes())])
        found = match_truth(boxes, truth[name], min_iou=0.9)
        if found:
            problems[name] = found
    assert problems == {}


def test_tf1_and_tf2_answers_agree(
    detectors: dict[str, Detector], shapes_images: tuple[Path, Truth]
) -> None:
    folder, truth = shapes_images
    for name in sorted(truth)[:30]:
        image = decode_image((folder / name).read_bytes())
        (a,), (b,) = (
            detectors["shapes_tf2"].detect([image]),
            detectors["shapes_tf1"].detect([image]),
        )
        assert [x["ObjectClassName"] for x in a] == [x["ObjectClassName"] for x in b], name
        for x, y in zip(a, b, strict=True):
            assert x["coordinates"] == y["coordinates"], name
            assert x["confidence"] == pytest.approx(y["confidence"], abs=0.01), name


class CallCounter:
    def __init__(self, detector: Detector) -> None:
        self.calls: list[int] = []
        self._run = detector.engine._run

        def counting(batch: np.ndarray) -> dict[str, np.ndarray]:
            self.calls.append(batch.shape[0])
            return self._run(batch)

        detector.engine._run = counting  # type: ignore[method-assign]


def test_batched_answers_equal_one_by_one_answers(
    model_repository: Path, shapes_images: tuple[Path, Truth], tmp_path: Path
) -> None:
    from engines.modelgen.export import export_shapes_tf2

    shutil.copytree(model_repository / "shapes_tf2", tmp_path / "open_tf2")
    for weights in ("saved_model.pb", "variables"):
        target = tmp_path / "open_tf2" / weights
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    export_shapes_tf2(tmp_path / "export", open_batch=True)
    for item in (tmp_path / "export").iterdir():
        if item.name in ("saved_model.pb", "variables"):
            shutil.move(str(item), tmp_path / "open_tf2" / item.name)
    repo = ModelRepository(tmp_path)
    folder, truth = shapes_images
    same_size = [n for n in sorted(truth) if n.endswith(".png")]
    images = [decode_image((folder / n).read_bytes()) for n in same_size[:12]]
    sizes = {img.shape for img in images}
    assert len(sizes) > 1  # mixed sizes: grouping matters

    for detector in (
        load_detector(repo.spec("open_tf2")),
        load_detector(ModelRepository(model_repository).spec("shapes_tf1")),
        load_detector(ModelRepository(model_repository).spec("shapes_tf2")),
    ):
        one_by_one = [detector.detect([img])[0] for img in images]
        counter = CallCounter(detector)
        batched = detector.detect(images)
        assert batched == one_by_one
        if detector.engine.fixed_batch == 1:
            assert counter.calls == [1] * len(images)
        else:  # one call per distinct image size
            assert len(counter.calls) == len(sizes) and sum(counter.calls) == len(images)


def test_overrides_change_filtering(
    detectors: dict[str, Detector], shapes_images: tuple[Path, Truth]
) -> None:
    folder, truth = shapes_images
    name = next(n for n in sorted(truth) if len(truth[n]) >= 3)
    image = decode_image((folder / name).read_bytes())
    detector = detectors["shapes_tf2"]
    (default,) = detector.detect([image])
    assert len(default) == len(truth[name])
    (one,) = detector.detect([image], [detector.options(predictions=1)])
    assert one == default[:1]
    (none,) = detector.detect([image], [detector.options(confidence=100)])
    assert none == [b for b in default if b["confidence"] >= 100]
    (all_,) = detector.detect([image], [Options(confidence=0, predictions=100)])
    assert len(all_) >= len(default)


def test_fewer_detections_than_predictions(
    detectors: dict[str, Detector], shapes_images: tuple[Path, Truth]
) -> None:
    folder, truth = shapes_images
    name = next(n for n in sorted(truth) if len(truth[n]) == 1)
    for detector in detectors.values():
        assert detector.spec.config.predictions > 1
        (boxes,) = detector.detect(
            [decode_image((folder / name).read_bytes())],
            [detector.options(confidence=0, predictions=500)],
        )
        assert match_truth(boxes[:1], truth[name]) == []


def test_empty_image_gives_no_boxes(detectors: dict[str, Detector]) -> None:
    blank = np.full((240, 320, 3), 200, dtype=np.uint8)
    for detector in detectors.values():
        assert detector.detect([blank]) == [[]]


def test_bench_model_runs_batch_8_in_one_call(model_repository: Path) -> None:
    detector = load_detector(ModelRepository(model_repository).spec("ssd_mobilenet_v2_bench"))
    assert detector.engine.fixed_batch is None
    counter = CallCounter(detector)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (480, 640, 3), dtype=np.uint8) for _ in range(8)]
    results = detector.detect(images)
    assert counter.calls == [8] and len(results) == 8
    assert len(detector.spec.labels) == 90


def test_drawing_returns_a_jpeg_with_boxes(
    detectors: dict[str, Detector], shapes_images: tuple[Path, Truth]
) -> None:
    folder, truth = shapes_images
    name = next(n for n in sorted(truth) if n.endswith(".png") and truth[n])
    image = decode_image((folder / name).read_bytes())
    (boxes,) = detectors["shapes_tf2"].detect([image])
    drawn = np.asarray(Image.open(io.BytesIO(draw_boxes(image, boxes))).convert("RGB")).astype(int)
    assert drawn.shape == image.shape
    c = boxes[0]["coordinates"]
    edge = drawn[c["top"] + (c["bottom"] - c["top"]) // 2, c["left"]]
    original = image[c["top"] + (c["bottom"] - c["top"]) // 2, c["left"]].astype(int)
    assert np.abs(edge - original).sum() > 60  # the frame is drawn on the box's left edge
    far = [(y, x) for y in (2, image.shape[0] - 3) for x in (2, image.shape[1] - 3)]
    assert any(np.abs(drawn[y, x] - image[y, x].astype(int)).sum() < 40 for y, x in far)


# -- broken models ----------------------------------------------------------------


def copy_model(src: Path, dest_root: Path, name: str) -> Path:
    shutil.copytree(src, dest_root / name)
    return dest_root / name


@pytest.mark.parametrize("weights_file", ["saved_model.pb", "frozen_inference_graph.pb"])
def test_corrupt_weights_are_model_load_failed(
    model_repository: Path, tmp_path: Path, weights_file: str
) -> None:
    source = "shapes_tf2" if weights_file == "saved_model.pb" else "shapes_tf1"
    folder = copy_model(model_repository / source, tmp_path, "broken")
    (folder / weights_file).write_bytes(b"\x08\x01garbage that is not a protobuf" * 10)
    with pytest.raises(ModelLoadFailed) as info:
        load_detector(ModelRepository(tmp_path).spec("broken"))
    assert info.value.code == "model_load_failed" and "broken" in info.value.message


def test_frozen_graph_without_the_expected_tensors(tmp_path: Path, model_repository: Path) -> None:
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.uint8, [None, None, None, 3], name="images")
        tf.identity(x, name="out")
    folder = copy_model(model_repository / "shapes_tf1", tmp_path, "wrong_names")
    (folder / "frozen_inference_graph.pb").write_bytes(graph.as_graph_def().SerializeToString())
    with pytest.raises(ModelLoadFailed, match="image_tensor:0"):
        load_detector(ModelRepository(tmp_path).spec("wrong_names"))


def test_wrong_engine_name_for_the_files(tmp_path: Path, model_repository: Path) -> None:
    folder = copy_model(model_repository / "shapes_tf2", tmp_path, "mislabelled")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(
        json.dumps({**config, "inference_engine_name": "tensorflow_detection"})
    )
    with pytest.raises(InvalidModelConfig, match=r"frozen_inference_graph\.pb"):
        ModelRepository(tmp_path).spec("mislabelled")


def test_validate_reports_every_broken_model_and_keeps_going(
    tmp_path: Path, model_repository: Path
) -> None:
    copy_model(model_repository / "shapes_tf1", tmp_path, "good")
    bad_labels = copy_model(model_repository / "shapes_tf1", tmp_path, "bad_labels")
    (bad_labels / "object-detection.pbtxt").write_text("item { id: 1 name: 'x' ")
    no_field = copy_model(model_repository / "shapes_tf1", tmp_path, "no_field")
    config = json.loads((no_field / "config.json").read_text())
    del config["predictions"]
    (no_field / "config.json").write_text(json.dumps(config))
    run = run_validate(tmp_path, "--device", "cpu")
    assert run.returncode == 1, run.stderr
    lines = sorted(run.stdout.splitlines())
    assert lines[0].startswith("FAIL bad_labels: [invalid_model_config]")
    assert (
        lines[1].startswith("FAIL no_field: [invalid_model_config]")
        and "field 'predictions'" in lines[1]
    )
    assert lines[2].startswith("ok   good: tensorflow_detection")


def test_validate_refuses_a_path_escape(tmp_path: Path) -> None:
    run = run_validate(tmp_path, "--models", "../etc")
    assert run.returncode == 1
    assert "FAIL ../etc: [model_not_found]" in run.stdout


def test_unknown_model_name(model_repository: Path) -> None:
    with pytest.raises(ModelNotFound):
        ModelRepository(model_repository).spec("no_such_model")


@pytest.fixture(scope="module")
def camera_frames(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Truth]:
    """Shapes images at camera resolutions: 1080p and 4K JPEGs."""
    from engines.modelgen.images import write_test_images

    folder = tmp_path_factory.mktemp("camera_frames")
    truth = write_test_images(
        folder, count=8, seed=21, formats=("jpg",), sizes=((1920, 1080), (3840, 2160))
    )
    return folder, truth


@pytest.mark.parametrize("model", ["shapes_tf2", "shapes_tf1"])
def test_scaled_decoding_gives_the_full_resolution_boxes(
    detectors: dict[str, Detector], camera_frames: tuple[Path, Truth], model: str
) -> None:
    folder, truth = camera_frames
    detector = detectors[model]
    assert detector.resizer is not None  # the generated model declares its input size
    compared = 0
    for name in sorted(truth):
        data = (folder / name).read_bytes()
        full = decode_for_model(data)
        scaled = decode_for_model(data, resizer=detector.resizer)
        assert scaled.pixels.shape == (540, 960, 3), name  # 1/2 of 1080p, 1/4 of 4K
        assert (
            (scaled.width, scaled.height) == (full.width, full.height) == full.pixels.shape[1::-1]
        )
        (reference,) = detector.detect([full.pixels])
        (boxes,) = detector.detect([scaled.pixels], sizes=[(scaled.width, scaled.height)])
        assert [b["ObjectClassName"] for b in boxes] == [b["ObjectClassName"] for b in reference], (
            name
        )
        for got, want in zip(boxes, reference, strict=True):
            a, b = got["coordinates"], want["coordinates"]
            box_a = [a["left"], a["top"], a["right"], a["bottom"]]
            box_b = [b["left"], b["top"], b["right"], b["bottom"]]
            assert iou(box_a, box_b) >= 0.95, (name, got, want)
        assert match_truth(boxes, truth[name], min_iou=0.9) == [], name
        compared += len(reference)
    assert compared >= 8  # enough boxes for the comparison to mean something
