"""Model Garden exports, made by Model Garden's own exporter, read right by the engine."""

from __future__ import annotations

from pathlib import Path

import pytest

from engines.config import BoxFormat, OutputConvention
from engines.detector import Detector, load_detector
from engines.errors import InvalidModelOutput
from engines.images import decode_image
from engines.repository import ModelRepository
from tests.support.models import (
    MODEL_GARDEN,
    MODEL_GARDEN_SIZES,
    boxes_match,
    declared_normalized,
    link_model,
    model_garden_reference,
    run_validate,
    shapes_png,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def detectors(model_garden_repository: Path) -> dict[str, Detector]:
    repo = ModelRepository(model_garden_repository)
    return {name: load_detector(repo.spec(name)) for name in MODEL_GARDEN}


def test_the_exports_are_the_exporter_s_in_both_box_units(
    detectors: dict[str, Detector], model_garden_repository: Path
) -> None:
    for name, box_format in zip(
        MODEL_GARDEN, (BoxFormat.INPUT_PIXELS, BoxFormat.NORMALIZED), strict=True
    ):
        convention = detectors[name].engine.convention
        assert convention.family is OutputConvention.MODEL_GARDEN
        assert convention.box_format is box_format
        assert detectors[name].engine.fixed_batch is None  # the exporter's open batch
        params = (model_garden_repository / name / "params.yaml").read_text()
        assert "output_normalized_coordinates: " in params


@pytest.mark.parametrize("name", MODEL_GARDEN)
@pytest.mark.parametrize("size", MODEL_GARDEN_SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_every_box_is_what_the_raw_outputs_mean_in_image_pixels(
    detectors: dict[str, Detector],
    model_garden_repository: Path,
    name: str,
    size: tuple[int, int],
) -> None:
    png = shapes_png(*size)
    detector = detectors[name]
    (boxes,) = detector.detect([decode_image(png)], [detector.options(0, 100)])
    reference = model_garden_reference(model_garden_repository / name, png)
    assert len(reference) >= 5  # random weights, score threshold 0: boxes to compare
    assert boxes_match(boxes, reference) == []
    for box in boxes:
        c = box["coordinates"]
        assert 0 <= c["left"] <= c["right"] <= size[0] and 0 <= c["top"] <= c["bottom"] <= size[1]


def test_a_batch_of_equal_images_answers_as_one_by_one(detectors: dict[str, Detector]) -> None:
    detector = detectors["retinanet_mg_pixels"]
    images = [decode_image(shapes_png(320, 240, seed=s)) for s in range(3)]
    options = [detector.options(0, 100)] * 3
    together = detector.detect(images, options)
    alone = [detector.detect([image], options[:1])[0] for image in images]
    assert together == alone


def test_pixel_boxes_declared_normalized_answer_invalid_model_output(
    model_garden_repository: Path, tmp_path: Path
) -> None:
    declared_normalized(model_garden_repository / "retinanet_mg_pixels", tmp_path / "liar")
    detector = load_detector(ModelRepository(tmp_path).spec("liar"))
    assert detector.engine.convention.box_format is BoxFormat.NORMALIZED
    with pytest.raises(InvalidModelOutput) as info:
        detector.detect([decode_image(shapes_png(640, 480))])
    assert info.value.code == "invalid_model_output"
    assert "liar" in info.value.message and "box_format" in info.value.message


def test_validate_prints_the_convention_and_fails_a_model_that_breaks_it(
    model_garden_repository: Path, tmp_path: Path
) -> None:
    # One good model is enough here (each costs a load); the other one's convention
    # is checked in test_the_exports_are_the_exporter_s_in_both_box_units.
    link_model(model_garden_repository / "retinanet_mg_normalized", tmp_path / "good")
    declared_normalized(model_garden_repository / "retinanet_mg_pixels", tmp_path / "liar")
    run = run_validate(tmp_path, "--device", "cpu")
    assert run.returncode == 1, run.stderr
    lines = dict(line.split(":", 1) for line in run.stdout.splitlines())
    assert lines["FAIL liar"].startswith(" [invalid_model_output]")
    assert "outputs model_garden, normalized boxes" in lines["ok   good"]
    assert "liar" in lines["FAIL liar"] and "input_pixels" not in lines["ok   good"]
