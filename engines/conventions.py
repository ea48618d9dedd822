"""Which output convention a detection export follows, read from its signature.

A served box is only right if we know what the model's numbers mean. The
TF Object Detection API gives normalised boxes; Model Garden's
`official.vision` detection exports give boxes in pixels of the resized model
input, with `image_info` to map them back, unless exported with
`output_normalized_coordinates`. Both have the same output names otherwise,
so the convention is decided here, once at load, from what the signature
returns and what the export wrote next to it, and `config.json` can override
each decision. A signature that matches none of them is refused at load with
what it has and what `config.json` can say to map it: guessing is how a
server ends up returning plausible but wrong boxes.

Ultralytics YOLO and KerasHub exports are told apart by their outputs (and
the metadata.yaml beside them); their reading lives in engines/yolo.py and
engines/keras_hub.py, which turn their outputs into the Model Garden form
(boxes in input pixels plus an image_info resize record) inside the engine
call.
"""

from __future__ import annotations

import re
from pathlib import Path

from engines import keras_hub, yolo
from engines.config import OUTPUT_NAMES, BoxFormat, ModelConfig, OutputConvention
from engines.convention_types import (
    IMAGE_INFO,
    OD_API,
    REQUIRED_OUTPUTS,
    Convention,
    Signature,
    parse_spec,
)
from engines.errors import InvalidModelConfig
from engines.metadata import ExportMetadata

__all__ = [
    "IMAGE_INFO",
    "OD_API",
    "OUTPUT_NAMES",
    "REQUIRED_OUTPUTS",
    "Convention",
    "Signature",
    "parse_spec",
    "resolve_convention",
]

#: Written by Model Garden's exporter next to saved_model/ (the export directory).
PARAMS_FILE = "params.yaml"
_NORMALIZED_FLAG = re.compile(r"^\s*output_normalized_coordinates:\s*(true|false)\s*$", re.M)


def _exporter_convention(
    model: str, config: ModelConfig, outputs: Signature, meta: ExportMetadata | None
) -> Convention | None:
    """Ultralytics or KerasHub, where the outputs (or config.json) say so.

    Raises:
        InvalidModelConfig: as the exporter's reader says; or config.json sets
            `box_format` / `output_names`, which an exporter's layout ignores.
    """
    forced = config.output_convention
    if forced in (OutputConvention.OD_API, OutputConvention.MODEL_GARDEN):
        return None
    found = dict(outputs)
    if forced in (None, OutputConvention.KERAS_HUB):
        convention = keras_hub.keras_hub_convention(
            model, found, meta, forced is OutputConvention.KERAS_HUB
        )
        if convention is not None:
            return _no_ignored_fields(model, config, convention)
    convention = yolo.ultralytics_convention(
        model, found, meta, forced is OutputConvention.ULTRALYTICS
    )
    return None if convention is None else _no_ignored_fields(model, config, convention)


def _no_ignored_fields(model: str, config: ModelConfig, convention: Convention) -> Convention:
    """An exporter's layout fixes the box unit and the outputs: a config.json field
    saying otherwise would be dropped silently, and whoever wrote it believes it holds.

    Raises:
        InvalidModelConfig: `box_format` or `output_names` is set.
    """
    fields = (("box_format", config.box_format), ("output_names", config.output_names))
    ignored = [name for name, value in fields if value]
    if ignored:
        raise InvalidModelConfig(
            f"{model}: config.json sets {' and '.join(ignored)}, which a "
            f"{convention.describe()} export fixes itself (its reader, not config.json, says "
            f"what its outputs are): remove {' and '.join(ignored)} from config.json"
        )
    return convention


def _listing(specs: Signature) -> str:
    return ", ".join(f"{name}: {spec}" for name, spec in sorted(specs.items())) or "nothing"


def _how_to_map() -> str:
    return (
        'config.json can map it: "output_names": {"detection_boxes": "<output>", ...} '
        f'(keys {list(OUTPUT_NAMES)}), "output_convention": '
        f'{[c.value for c in OutputConvention]}, "box_format": {[b.value for b in BoxFormat]}'
    )


def model_garden_box_format(model_dir: Path) -> BoxFormat | None:
    """The box unit Model Garden's exporter recorded in the model folder's params.yaml.

    The exporter writes the experiment's params next to `saved_model/`;
    `task.export_config.output_normalized_coordinates` is the only place that
    says whether the boxes were normalised (the signature is the same).
    """
    path = model_dir / PARAMS_FILE
    if not path.is_file():
        return None
    found = _NORMALIZED_FLAG.search(path.read_text(encoding="utf-8", errors="replace"))
    if found is None:
        return None
    return BoxFormat.NORMALIZED if found.group(1) == "true" else BoxFormat.INPUT_PIXELS


def resolve_convention(
    model: str,
    config: ModelConfig,
    inputs: Signature,
    outputs: Signature,
    model_dir: Path,
    metadata: ExportMetadata | None,
) -> Convention:
    """Decide how to read `model`'s outputs: config.json first, then the signature.

    `inputs` and `outputs` describe the serving signature (name -> "dtype[shape]");
    `model_dir` is the model's folder, where a Model Garden export keeps
    params.yaml next to saved_model/; `metadata` its parsed metadata.yaml, None
    when there is none (`ModelSpec.metadata`: read once, by the repository; no
    default, so that no caller skips it by forgetting it).

    Raises:
        InvalidModelConfig: the outputs match no convention, or a convention
            that cannot hold for them; the message lists what was found and
            the config.json fields that map it.
    """
    exported = _exporter_convention(model, config, outputs, metadata)
    if exported is not None:
        return exported
    names = {key: config.output_names.get(key, key) for key in OUTPUT_NAMES}
    found = f"the signature takes {_listing(inputs)} and returns {_listing(outputs)}"
    missing = [names[key] for key in REQUIRED_OUTPUTS if names[key] not in outputs]
    if missing:
        raise InvalidModelConfig(
            f"{model}: the outputs match no supported convention (TF Object Detection API: "
            f"{list(REQUIRED_OUTPUTS)}; Model Garden: the same plus {IMAGE_INFO}; Ultralytics: "
            "one float32 output [B, 4 + classes, anchors] or [B, K, 6]; KerasHub: boxes, "
            f"confidence, labels, num_detections); {found}; "
            f"missing {missing}. {_how_to_map()}"
        )
    has_info = names[IMAGE_INFO] in outputs
    family = config.output_convention or (
        OutputConvention.MODEL_GARDEN if has_info else OutputConvention.OD_API
    )
    if family is OutputConvention.MODEL_GARDEN and not has_info:
        raise InvalidModelConfig(
            f"{model}: output_convention {family.value} needs the output {names[IMAGE_INFO]}; "
            f"{found}. {_how_to_map()}"
        )
    box_format = config.box_format
    if box_format is None:
        if family is OutputConvention.OD_API:
            box_format = BoxFormat.NORMALIZED
        else:
            box_format = model_garden_box_format(model_dir)
            if box_format is None:
                raise InvalidModelConfig(
                    f"{model}: a Model Garden export, but no {PARAMS_FILE} says whether its "
                    "boxes are normalised (its exporter writes one next to saved_model/): copy "
                    'it into the model folder, or set "box_format" in config.json to '
                    f"{[b.value for b in BoxFormat]}"
                )
    if box_format is BoxFormat.INPUT_PIXELS and not has_info:
        raise InvalidModelConfig(
            f"{model}: box_format {box_format.value} needs the output {names[IMAGE_INFO]} to map "
            f"boxes back to the image; {found}"
        )
    with_info = has_info and (
        family is OutputConvention.MODEL_GARDEN or box_format is BoxFormat.INPUT_PIXELS
    )
    keys = OUTPUT_NAMES if with_info else REQUIRED_OUTPUTS
    return Convention(family, box_format, {key: names[key] for key in keys})
