"""What a model's graph resizes images to: config.json's input_size, or the
TF Object Detection API pipeline.config beside the export."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from engines.errors import InvalidModelConfig
from engines.repository import ModelRepository
from engines.resizer import (
    FixedShape,
    KeepAspectRatio,
    TextFormatError,
    parse_text_format,
    resizer_from_pipeline,
)

# Abridged from the Model Zoo's ssd_mobilenet_v2_320x320_coco17_tpu-8/pipeline.config.
SSD_PIPELINE = """
# SSD with Mobilenet v2
model {
  ssd {
    num_classes: 90
    image_resizer {
      fixed_shape_resizer {
        height: 320
        width: 320
      }
    }
    feature_extractor {
      type: "ssd_mobilenet_v2_keras"
      conv_hyperparams { regularizer { l2_regularizer { weight: 3.9e-05 } } }
    }
  }
}
train_config: {
  batch_size: 512
  data_augmentation_options { random_horizontal_flip { } }
  optimizer { momentum_optimizer: { learning_rate: { cosine_decay_learning_rate {
    learning_rate_base: .8 } } } }
  fine_tune_checkpoint_type: "classification"
}
train_input_reader: { label_map_path: "PATH_TO_BE_CONFIGURED/label_map.txt" }
"""

# Abridged from faster_rcnn_resnet50_v1_640x640_coco17_tpu-8 (keep_aspect_ratio_resizer).
FASTER_RCNN_PIPELINE = """
model {
  faster_rcnn {
    num_classes: 90
    image_resizer {
      keep_aspect_ratio_resizer {
        min_dimension: 640
        max_dimension: 1024
        pad_to_max_dimension: true
        per_channel_pad_value: [0, 0, 0]
      }
    }
    first_stage_anchor_generator { grid_anchor_generator { scales: [0.25, 0.5, 1.0, 2.0] } }
  }
}
"""


def test_fixed_shape_resizer_is_read() -> None:
    assert resizer_from_pipeline(SSD_PIPELINE) == FixedShape(height=320, width=320)


def test_keep_aspect_ratio_resizer_is_read() -> None:
    assert resizer_from_pipeline(FASTER_RCNN_PIPELINE) == KeepAspectRatio(640, 1024)


def test_missing_dimensions_take_the_proto_defaults() -> None:
    text = "model { ssd { image_resizer { fixed_shape_resizer { } } } }"
    assert resizer_from_pipeline(text) == FixedShape(300, 300)
    text = "model { faster_rcnn { image_resizer { keep_aspect_ratio_resizer { } } } }"
    assert resizer_from_pipeline(text) == KeepAspectRatio(600, 1024)


def test_resizers_that_do_not_bound_the_size_give_none() -> None:
    assert resizer_from_pipeline("model { ssd { image_resizer { identity_resizer { } } } }") is None
    assert resizer_from_pipeline("model { ssd { num_classes: 3 } }") is None


@pytest.mark.parametrize(
    "text",
    [
        "model { ssd {",
        "model }",
        "model { { } }",
        "model { ssd { num_classes } }",
        "model { ssd { image_resizer { fixed_shape_resizer { height: -3 } } } }",
    ],
)
def test_malformed_text_is_a_typed_error(text: str) -> None:
    with pytest.raises(TextFormatError):
        resizer_from_pipeline(text)


def test_text_format_parser_keeps_repeated_fields_and_strings() -> None:
    parsed = parse_text_format('a: 1 a: 2 b { c: "x y" } d: [3, 4] e < f: 5 >;')
    assert parsed == {"a": ["1", "2"], "b": [{"c": ["x y"]}], "d": ["3", "4"], "e": [{"f": ["5"]}]}


def test_fixed_shape_target_ignores_the_aspect() -> None:
    assert FixedShape(300, 400).target(1920, 1080) == (400, 300)


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((1920, 1080), (1024, 576)),  # short side to 640 would make the long side 1138 > 1024
        ((640, 480), (853, 640)),  # short side to 640, long side 853 <= 1024
        ((1080, 1920), (576, 1024)),
        ((3000, 3000), (640, 640)),
    ],
)
def test_keep_aspect_ratio_target_follows_min_and_max_dimension(
    size: tuple[int, int], expected: tuple[int, int]
) -> None:
    assert KeepAspectRatio(640, 1024).target(*size) == expected


def _model_copy(model_repository: Path, tmp_path: Path, name: str = "shapes_tf2") -> Path:
    folder = tmp_path / name
    shutil.copytree(model_repository / name, folder)
    return folder


def test_generated_models_declare_their_input_size(model_repository: Path) -> None:
    repo = ModelRepository(model_repository)
    assert repo.spec("shapes_tf2").resizer == FixedShape(480, 640)
    assert repo.spec("shapes_tf1").resizer == FixedShape(480, 640)
    # The SSD declares it the Model Zoo's way, in pipeline.config.
    assert (model_repository / "ssd_mobilenet_v2_bench" / "pipeline.config").is_file()
    assert repo.spec("ssd_mobilenet_v2_bench").resizer == FixedShape(300, 300)


def test_config_input_size_wins_over_pipeline_config(
    model_repository: Path, tmp_path: Path
) -> None:
    folder = _model_copy(model_repository, tmp_path)
    (folder / "pipeline.config").write_text(FASTER_RCNN_PIPELINE)
    assert ModelRepository(tmp_path).spec(folder.name).resizer == FixedShape(480, 640)
    config = json.loads((folder / "config.json").read_text())
    del config["input_size"]
    (folder / "config.json").write_text(json.dumps(config))
    assert ModelRepository(tmp_path).spec(folder.name).resizer == KeepAspectRatio(640, 1024)


def test_without_either_the_model_has_no_resizer(model_repository: Path, tmp_path: Path) -> None:
    folder = _model_copy(model_repository, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    del config["input_size"]
    (folder / "config.json").write_text(json.dumps(config))
    assert ModelRepository(tmp_path).spec(folder.name).resizer is None
    # A pipeline.config we cannot read is a hint lost, not a model refused.
    (folder / "pipeline.config").write_text("model { ssd {")
    assert ModelRepository(tmp_path).spec(folder.name).resizer is None


@pytest.mark.parametrize("bad", [[0, 300], [300], "300x300", [300, 300, 3]])
def test_a_bad_input_size_names_the_field(
    model_repository: Path, tmp_path: Path, bad: object
) -> None:
    folder = _model_copy(model_repository, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["input_size"] = bad
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(InvalidModelConfig, match="input_size"):
        ModelRepository(tmp_path).spec(folder.name)
