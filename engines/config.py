"""`config.json`, the per-model settings file of the old API, validated.

The fields and their meaning are the old API's (see the seed README); all are
required. Validation errors name the field so that a broken model folder can be
fixed without reading our code.
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
