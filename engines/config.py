"""`config.json`, the per-model settings file of the old API, validated.

The fields and their meaning are the old API's (see the seed README); all are
required. A separate block of optional fields, new in tfstream, says how to
read a model's outputs where detecting it from the signature is not enough
(see models/README.md). Validation errors name the field so that a broken
model folder can be fixed without reading our code.
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from engines.errors import InvalidModelConfig


class EngineName(StrEnum):
    """The `inference_engine_name` values, i.e. the two export formats."""

    TF2 = "tensorflow2_detection"
    """TF2 SavedModel as `exporter_main_v2` writes it."""
    TF1 = "tensorflow_detection"
    """TF1 `frozen_inference_graph.pb`."""


class OutputConvention(StrEnum):
    """Whose output layout a detection export follows."""

    OD_API = "tf_object_detection_api"
    """TF Object Detection API: normalised boxes, float classes, num_detections."""
    MODEL_GARDEN = "model_garden"
    """Model Garden `official.vision`: int32 classes, plus `image_info`."""
    ULTRALYTICS = "ultralytics"
    """Ultralytics YOLO `format="saved_model"`: one float output, letterboxed input
    (engines/yolo.py)."""
    KERAS_HUB = "keras_hub"
    """KerasHub detector exported with ExportArchive around its preprocessor and
    `predict_step`: decoded `boxes`/`confidence`/`labels`/`num_detections`
    (engines/keras_hub.py)."""


class BoxFormat(StrEnum):
    """The unit of `detection_boxes` (always [ymin, xmin, ymax, xmax])."""

    NORMALIZED = "normalized"
    """Fractions of the original image, in [0, 1]."""
    INPUT_PIXELS = "input_pixels"
    """Pixels of the resized model input; `image_info` maps them back."""


#: The outputs a detection export has, under the names the two conventions use.
OUTPUT_NAMES = (
    "detection_boxes",
    "detection_scores",
    "detection_classes",
    "num_detections",
    "image_info",
)


class ModelConfig(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    inference_engine_name: EngineName
    confidence: float = Field(ge=0, le=100)
    """Minimum score, in percent, of a box that is returned."""
    predictions: int = Field(ge=0)
    """Maximum number of boxes returned, best first."""
    number_of_classes: int = Field(ge=1)
    framework: str
    type: str
    network: str

    # --- Decode resolution (issue 12). Kept apart from the output-convention fields. ---
    input_size: tuple[int, int] | None = None
    """Optional [height, width] the model's graph resizes every image to (an SSD's
    300x300). JPEGs are then decoded at the smallest DCT scale still covering it;
    boxes stay in the original image's pixels. Absent: read from a TF Object
    Detection API `pipeline.config` beside the export, else full resolution."""

    @field_validator("input_size")
    @classmethod
    def _positive(cls, value: tuple[int, int] | None) -> tuple[int, int] | None:
        if value is not None and min(value) < 1:
            raise ValueError("input_size must be [height, width] of positive integers")
        return value

    version: int | None = Field(default=None, ge=1)
    """Optional: the version folder to serve (`<model>/<N>/`), instead of the highest
    complete one. Read from the config.json beside the version folders."""

    # -- optional, tfstream only: how requests are batched (defaults: the command line) --
    max_batch: int | None = Field(default=None, ge=1)
    """Most requests in one engine call of this model (ignored where its graph takes
    a fixed batch: that is what one call takes)."""
    max_delay_ms: float | None = Field(default=None, ge=0)
    """How long a batch of this model waits for more requests once one is there."""
    instances: int | None = Field(default=None, ge=1)
    """Engine calls of this model running at once, on its device."""

    # -- optional, tfstream only: how to read the outputs (models/README.md) --
    output_convention: OutputConvention | None = None
    """Overrides the convention detected from the signature."""
    box_format: BoxFormat | None = None
    """Overrides the box unit detected (Model Garden: from params.yaml)."""
    output_names: dict[str, str] = Field(default_factory=dict)
    """Signature output names of a model that calls them otherwise,
    e.g. {"detection_boxes": "boxes"}; keys are from OUTPUT_NAMES."""

    tracking: bool = False
    """Track every camera (keyed request) of this model by default: `track_id` on its
    answers' boxes (docs/tracking.md). A camera's record on <prefix>.zones wins."""

    iou_threshold: float | None = Field(default=None, gt=0, le=1, strict=True)
    """IoU above which class-wise NMS drops the lower-scored of two boxes; only for
    exports whose NMS tfstream does (raw Ultralytics outputs). Absent: 0.7, the
    Ultralytics predict default."""

    @field_validator("iou_threshold", mode="before")
    @classmethod
    def _a_number(cls, value: object) -> object:
        if isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        return value

    @field_validator("output_names")
    @classmethod
    def _known_outputs(cls, names: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(names) - set(OUTPUT_NAMES))
        if unknown:
            raise ValueError(f"unknown keys {unknown}; known: {list(OUTPUT_NAMES)}")
        return names

    def public(self) -> dict[str, object]:
        """What `/models/{m}/config` shows: the descriptive fields of the old API."""
        return {"framework": self.framework, "type": self.type, "network": self.network}


def load_config(path: Path) -> ModelConfig:
    """Read and validate a `config.json`.

    Raises:
        InvalidModelConfig: missing file, invalid JSON, or a field missing or wrong
            (the message names the field).
    """
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidModelConfig(f"{path.parent.name}: config.json is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidModelConfig(
            f"{path.parent.name}: config.json is not valid JSON: {exc}"
        ) from None
    if not isinstance(raw, dict):
        raise InvalidModelConfig(f"{path.parent.name}: config.json must hold a JSON object")
    try:
        return ModelConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"field '{'.'.join(str(p) for p in err['loc'])}': {err['msg']}" for err in exc.errors()
        )
        raise InvalidModelConfig(f"{path.parent.name}: config.json: {problems}") from None
