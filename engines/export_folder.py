"""What a model folder's files decide together: the config.json and label map an
exporter's folder is served with where it brings neither, the one input size,
and what images are decoded to.

metadata.yaml (engines/metadata.py) says what the exporter wrote; here it stands
in for a missing config.json (the exporter's own predict defaults) and label
map (its class names). The input size has three sources, the serving
signature, metadata.yaml's `imgsz` / `image_size` and config.json's
`input_size`: `model_input_size` is the one place that reads them, and where
two disagree the model is refused naming both (whichever were taken, some
boxes would be mapped back with the other's geometry).
"""

from __future__ import annotations

from pathlib import Path

from engines import yolo
from engines.config import EngineName, ModelConfig, OutputConvention, load_config
from engines.convention_types import Convention
from engines.errors import InvalidModelConfig
from engines.labels import load_label_map
from engines.metadata import METADATA_FILE, ExportMetadata
from engines.resizer import FixedShape, Letterbox, Resizer, read_pipeline_config

CONFIG_FILE = "config.json"
LABEL_MAP_FILE = "object-detection.pbtxt"


def exporter_defaults(meta: ExportMetadata) -> ModelConfig:
    """The config.json an export folder without one is served with: the
    exporter's own predict defaults (Ultralytics: 25 %, at most 300 boxes;
    KerasHub: its decoder's thresholds are baked into the export, so 0 %)."""
    return ModelConfig(
        inference_engine_name=EngineName.TF2,
        confidence=yolo.CONFIDENCE if meta.ultralytics else 0.0,
        predictions=yolo.MAX_DETECTIONS,
        number_of_classes=len(meta.names),
        framework="tensorflow",
        type="object-detection",
        network="yolo" if meta.ultralytics else "keras_hub",
    )


def load_config_and_labels(
    home: Path, shared: Path | None = None, *, meta: ExportMetadata | None
) -> tuple[ModelConfig, dict[int, str]]:
    """config.json and the label map of a model, with metadata.yaml standing in for
    either where it is missing. `home` holds the export; `meta` is its metadata.yaml,
    parsed once by the caller (`load_metadata(home)`); each file is taken from `home`,
    else from `shared` (the model folder beside TF Serving's version folders: a
    version's own file wins).

    Raises:
        InvalidModelConfig: a file is broken, or config.json / the label map is
            missing and there is no metadata.yaml to stand in (the message names
            the files an export brings).
    """
    folders = (home,) if shared is None else (home, shared)

    def find(file: str) -> Path | None:
        return next((f / file for f in folders if (f / file).is_file()), None)

    config_file, labels_file = find(CONFIG_FILE), find(LABEL_MAP_FILE)
    if meta is None and (config_file is None or labels_file is None):
        missing = " and ".join(
            name
            for name, there in ((CONFIG_FILE, config_file), (LABEL_MAP_FILE, labels_file))
            if there is None
        )
        raise InvalidModelConfig(
            f"{(shared or home).name}: {missing} {'are' if ' and ' in missing else 'is'} "
            f"missing (an Ultralytics or KerasHub export needs neither, but then needs its "
            f"{METADATA_FILE} with the class names: copy the whole export folder)"
        )
    if config_file is not None or meta is None:
        config = load_config(config_file or home / CONFIG_FILE)
    else:
        config = exporter_defaults(meta)
    if labels_file is not None or meta is None:
        return config, load_label_map(labels_file or home / LABEL_MAP_FILE)
    return config, dict(meta.names)


def model_input_size(
    model: str,
    config: ModelConfig,
    meta: ExportMetadata | None,
    signature: tuple[int | None, int | None] | None = None,
) -> tuple[int, int] | None:
    """The model input's [height, width]: every source that gives one must agree.

    `signature` is the serving input's (height, width) where the graph takes
    the model input itself (Ultralytics), None where it resizes inside
    (KerasHub, the Object Detection API) or before TensorFlow is loaded.

    Raises:
        InvalidModelConfig: two sources disagree; the message names both values.
    """
    sources: list[tuple[str, tuple[int, int]]] = []
    if signature is not None and signature[0] is not None and signature[1] is not None:
        sources.append(("the serving signature's input", (int(signature[0]), int(signature[1]))))
    if meta is not None and meta.imgsz is not None:
        sources.append((f"{METADATA_FILE}'s imgsz / image_size", meta.imgsz))
    if config.input_size is not None:
        height, width = config.input_size
        sources.append(("config.json's input_size", (int(height), int(width))))
    if not sources:
        return None
    (first_name, first), *others = sources
    for name, size in others:
        if size != first:
            raise InvalidModelConfig(
                f"{model}: {first_name} is {list(first)} [height, width] but {name} is "
                f"{list(size)}: correct or remove the wrong one (boxes would be mapped back "
                "with the wrong input size)"
            )
    return first


def model_resizer(
    model: str, folder: Path, config: ModelConfig, meta: ExportMetadata | None
) -> Resizer | None:
    """What the model resizes an image to (whether JPEGs are then decoded no larger
    is `decode_resizer`'s choice, per convention): Ultralytics letterboxes (the long
    side fits); a KerasHub converter crops or stretches (both sides covered) or pads
    (the long side fits); an Object Detection API graph resizes to config.json's
    `input_size`, else to what its `pipeline.config` says (in the model folder, or
    its Model Zoo `saved_model/` parent layout).

    Raises:
        InvalidModelConfig: see `model_input_size`.
    """
    size = model_input_size(model, config, meta)
    if meta is not None and size is not None:
        if meta.ultralytics:
            return Letterbox(*size)
        if meta.pad_to_aspect_ratio and not meta.crop_to_aspect_ratio:
            return Letterbox(*size)
        return FixedShape(*size)
    if size is not None:
        return FixedShape(*size)
    return read_pipeline_config([folder, folder / "saved_model"])


#: Conventions whose images are decoded at full resolution: tfstream serves them as
#: their exporter's own predict does, which resizes the fully decoded image.
FULL_DECODE = (OutputConvention.ULTRALYTICS, OutputConvention.KERAS_HUB)


def decode_resizer(resizer: Resizer | None, convention: Convention) -> Resizer | None:
    """What a JPEG is decoded for: `resizer` (the smallest DCT scale covering the
    model's input, a fraction of a full decode) for the Object Detection API and
    Model Garden, whose graphs resize whatever they are given; None (full decode)
    for Ultralytics and KerasHub, so that the model sees the pixels their predict
    gives it. Measured (docs/model-formats.md, "The pixels the model sees"):
    scaled decode moved boxes of the generated exports by up to 8 px at 4K."""
    return None if convention.family in FULL_DECODE else resizer
