"""Which convention a signature is read with, and the load error for one that fits none."""

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engines.config import BoxFormat, ModelConfig, OutputConvention
from engines.conventions import resolve_convention
from engines.errors import InvalidModelConfig

OD_API_OUTPUTS = {
    "detection_boxes": "float32[1, 100, 4]",
    "detection_scores": "float32[1, 100]",
    "detection_classes": "float32[1, 100]",
    "num_detections": "float32[1]",
}
MODEL_GARDEN_OUTPUTS = {
    "detection_boxes": "float32[?, 10, 4]",
    "detection_scores": "float32[?, 10]",
    "detection_classes": "int32[?, 10]",
    "num_detections": "int32[?]",
    "image_info": "float32[?, 4, 2]",
}
PARAMS_YAML = "task:\n  export_config:\n    output_normalized_coordinates: {}\n"


def config(**extra: Any) -> ModelConfig:
    return ModelConfig.model_validate(
        {
            "inference_engine_name": "tensorflow2_detection",
            "confidence": 50,
            "predictions": 10,
            "number_of_classes": 4,
            "framework": "tensorflow",
            "type": "detection",
            "network": "x",
            **extra,
        }
    )


def resolve(outputs: dict[str, str], model_dir: Path, **extra: Any):  # type: ignore[no-untyped-def]
    return resolve_convention(
        "m", config(**extra), {"inputs": "uint8[?, ?, ?, 3]"}, outputs, model_dir, None
    )


def test_object_detection_api_signature_is_normalized(tmp_path: Path) -> None:
    convention = resolve(OD_API_OUTPUTS, tmp_path)
    assert convention.family is OutputConvention.OD_API
    assert convention.box_format is BoxFormat.NORMALIZED
    assert not convention.uses_image_info


@pytest.mark.parametrize(
    ("flag", "expected"), [("false", BoxFormat.INPUT_PIXELS), ("true", BoxFormat.NORMALIZED)]
)
def test_model_garden_box_unit_comes_from_the_exporter_s_params_yaml(
    tmp_path: Path, flag: str, expected: BoxFormat
) -> None:
    (tmp_path / "params.yaml").write_text(PARAMS_YAML.format(flag))
    convention = resolve(MODEL_GARDEN_OUTPUTS, tmp_path)
    assert convention.family is OutputConvention.MODEL_GARDEN
    assert convention.box_format is expected
    assert convention.uses_image_info


def test_model_garden_without_params_yaml_must_say_its_box_format(tmp_path: Path) -> None:
    with pytest.raises(InvalidModelConfig, match=r"params\.yaml.*box_format"):
        resolve(MODEL_GARDEN_OUTPUTS, tmp_path)
    convention = resolve(MODEL_GARDEN_OUTPUTS, tmp_path, box_format="input_pixels")
    assert convention.box_format is BoxFormat.INPUT_PIXELS


def test_config_json_overrides_what_params_yaml_says(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text(PARAMS_YAML.format("false"))
    convention = resolve(MODEL_GARDEN_OUTPUTS, tmp_path, box_format="normalized")
    assert convention.box_format is BoxFormat.NORMALIZED


def test_an_unknown_signature_is_refused_naming_what_it_has_and_how_to_map_it(
    tmp_path: Path,
) -> None:
    outputs = {"boxes": "float32[?, 50, 4]", "scores": "float32[?, 50]", "labels": "int64[?, 50]"}
    with pytest.raises(InvalidModelConfig) as info:
        resolve(outputs, tmp_path)
    message = info.value.message
    assert info.value.code == "invalid_model_config"
    for found in ("inputs: uint8[?, ?, ?, 3]", "boxes: float32[?, 50, 4]", "labels: int64[?, 50]"):
        assert found in message
    assert "output_names" in message and "output_convention" in message


def test_output_names_map_a_signature_that_names_its_outputs_otherwise(tmp_path: Path) -> None:
    outputs = {
        "boxes": "float32[?, 50, 4]",
        "scores": "float32[?, 50]",
        "labels": "float32[?, 50]",
        "count": "float32[?]",
    }
    names = {
        "detection_boxes": "boxes",
        "detection_scores": "scores",
        "detection_classes": "labels",
        "num_detections": "count",
    }
    convention = resolve(outputs, tmp_path, output_names=names)
    assert dict(convention.outputs) == names


def test_impossible_overrides_are_refused_at_load(tmp_path: Path) -> None:
    with pytest.raises(InvalidModelConfig, match="needs the output image_info"):
        resolve(OD_API_OUTPUTS, tmp_path, output_convention="model_garden")
    with pytest.raises(InvalidModelConfig, match="needs the output image_info"):
        resolve(OD_API_OUTPUTS, tmp_path, box_format="input_pixels")


def test_config_json_refuses_unknown_output_names_and_values() -> None:
    with pytest.raises(ValueError, match="unknown keys"):
        config(output_names={"boxes": "b"})
    with pytest.raises(ValueError):
        config(box_format="pixels")


# -- on a real SavedModel whose outputs have other names -------------------------------


@pytest.fixture(scope="module")
def other_names(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SavedModel returning boxes/scores/labels/count, and a model folder for it."""
    import tensorflow as tf

    from engines.modelgen.export import shapes_label_map, write_config, write_label_map

    class Module(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, "images")])
        def serve(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
            batch = tf.shape(images)[0]
            box = tf.constant([[0.25, 0.5, 0.75, 1.0]])
            return {
                "boxes": tf.tile(box[tf.newaxis], [batch, 1, 1]),
                "scores": tf.fill([batch, 1], 0.9),
                "labels": tf.fill([batch, 1], 2.0),
                "count": tf.fill([batch], 1.0),
            }

    folder = tmp_path_factory.mktemp("other_names") / "other"
    module = Module()
    tf.saved_model.save(module, str(folder), signatures={"serving_default": module.serve})
    write_label_map(folder, shapes_label_map())
    write_config(folder, "tensorflow2_detection", 4, "other")
    return folder


def test_a_real_signature_of_no_convention_fails_to_load_naming_it(other_names: Path) -> None:
    from engines.detector import load_detector
    from engines.repository import ModelRepository

    with pytest.raises(InvalidModelConfig) as info:
        load_detector(ModelRepository(other_names.parent).spec("other"))
    for found in ("images: uint8[?, ?, ?, 3]", "boxes: float32[?, 1, 4]", "count: float32[?]"):
        assert found in info.value.message
    assert "output_names" in info.value.message


def test_output_names_in_config_json_make_it_load_and_answer(other_names: Path) -> None:
    import json

    from engines.detector import load_detector
    from engines.repository import ModelRepository

    config = json.loads((other_names / "config.json").read_text())
    config["output_names"] = {
        "detection_boxes": "boxes",
        "detection_scores": "scores",
        "detection_classes": "labels",
        "num_detections": "count",
    }
    (other_names / "config.json").write_text(json.dumps(config))
    detector = load_detector(ModelRepository(other_names.parent).spec("other"))
    (boxes,) = detector.detect([np.zeros((100, 200, 3), np.uint8)])
    assert boxes == [
        {
            "ObjectClassName": "green disc",
            "ObjectClassId": 2,
            "confidence": 90.0,
            "coordinates": {"left": 100, "top": 25, "right": 200, "bottom": 75},
        }
    ]
