"""`metadata.yaml`: what an Ultralytics export (and a KerasHub one, exported as
models/README.md says) records about itself, read so that the export folder
alone is a servable model.

Ultralytics writes it next to `saved_model.pb`: `names` ({0: person, ...}),
`imgsz` ([h, w]), `stride`, `batch`, `end2end`, and the export `args`
(`nms`, `batch`...). Its class names are the labels when the folder has no
`object-detection.pbtxt` (ids as the model emits them, 0-based), and its
exporter's own predict defaults stand in for a missing `config.json`, so that
dropping the export folder into `models/` is enough.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engines.config import EngineName, ModelConfig, load_config
from engines.errors import InvalidModelConfig
from engines.labels import load_label_map
from engines.resizer import FixedShape, Letterbox, Resizer

METADATA_FILE = "metadata.yaml"
CONFIG_FILE = "config.json"
LABEL_MAP_FILE = "object-detection.pbtxt"

#: Ultralytics' predict defaults (`conf=0.25`, `max_det=300`); its `iou=0.7` is
#: `engines.yolo.DEFAULT_IOU`.
ULTRALYTICS_CONFIDENCE = 25.0
MAX_DETECTIONS = 300


@dataclass(frozen=True)
class ExportMetadata:
    names: dict[int, str]
    """Class id (as the model emits it) -> name."""
    imgsz: tuple[int, int] | None = None
    """[height, width] of the model input."""
    ultralytics: bool = False
    """Written by Ultralytics' exporter (it records `stride` and its `author`)."""
    end2end: bool | None = None
    nms: bool | None = None
    bounding_box_format: str = "yxyx"
    """Column order of a KerasHub export's `boxes` (its `bounding_box_format`)."""


def metadata_path(folder: Path) -> Path | None:
    """The export's metadata.yaml: in the model folder or beside its saved_model.pb."""
    for candidate in (folder / METADATA_FILE, folder / "saved_model" / METADATA_FILE):
        if candidate.is_file():
            return candidate
    return None


def load_metadata(folder: Path) -> ExportMetadata | None:
    """The export's metadata.yaml (`metadata_path`), parsed; None without one.

    Raises:
        InvalidModelConfig: see `read_metadata`.
    """
    path = metadata_path(folder)
    return read_metadata(path) if path is not None else None


def _names(raw: Any, source: str) -> dict[int, str]:
    if isinstance(raw, list):
        raw = dict(enumerate(raw))
    if not isinstance(raw, dict) or not raw:
        raise InvalidModelConfig(f"{source}: 'names' must map class ids to names, e.g. {{0: cat}}")
    names: dict[int, str] = {}
    for key, value in raw.items():
        try:
            class_id = int(key)
        except (TypeError, ValueError):
            raise InvalidModelConfig(
                f"{source}: class id {key!r} in 'names' is not an integer"
            ) from None
        if class_id < 0 or value is None or not str(value).strip():
            raise InvalidModelConfig(f"{source}: names[{key!r}]: ids >= 0, names not empty")
        names[class_id] = str(value)
    return names


def _imgsz(raw: Any, source: str) -> tuple[int, int] | None:
    if raw is None:
        return None
    if isinstance(raw, int):
        raw = [raw, raw]
    if (
        not isinstance(raw, list | tuple)
        or len(raw) != 2
        or not all(isinstance(v, int) and v > 0 for v in raw)
    ):
        raise InvalidModelConfig(f"{source}: 'imgsz' must be [height, width], not {raw!r}")
    return int(raw[0]), int(raw[1])


def read_metadata(path: Path) -> ExportMetadata:
    """Parse an export's metadata.yaml.

    Raises:
        InvalidModelConfig: not YAML, not a mapping, or `names` / `imgsz` malformed.
    """
    import yaml

    source = f"{path.parent.name}/{path.name}"
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise InvalidModelConfig(f"{source} cannot be read: {exc}") from None
    if not isinstance(raw, dict):
        raise InvalidModelConfig(f"{source} must hold a YAML mapping")
    args = raw.get("args") if isinstance(raw.get("args"), dict) else {}
    box_format = str(raw.get("bounding_box_format", "yxyx")).lower()
    if box_format not in ("yxyx", "xyxy"):
        raise InvalidModelConfig(
            f"{source}: bounding_box_format {box_format!r} is not supported (yxyx or xyxy)"
        )
    return ExportMetadata(
        names=_names(raw.get("names"), source),
        imgsz=_imgsz(raw.get("imgsz"), source),
        ultralytics="stride" in raw or "ultralytics" in str(raw.get("author", "")).lower(),
        end2end=raw.get("end2end") if isinstance(raw.get("end2end"), bool) else None,
        nms=args.get("nms") if isinstance(args.get("nms"), bool) else None,
        bounding_box_format=box_format,
    )


def exporter_defaults(meta: ExportMetadata) -> ModelConfig:
    """The config.json an export folder without one is served with: the
    exporter's own predict defaults (Ultralytics: 25 %, at most 300 boxes;
    KerasHub: its decoder's thresholds are baked into the export, so 0 %)."""
    return ModelConfig(
        inference_engine_name=EngineName.TF2,
        confidence=ULTRALYTICS_CONFIDENCE if meta.ultralytics else 0.0,
        predictions=MAX_DETECTIONS,
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


def export_resizer(meta: ExportMetadata | None) -> Resizer | None:
    """What an export with metadata.yaml `imgsz` resizes images to, for JPEG
    decoding at model resolution: Ultralytics letterboxes (the long side fits);
    KerasHub crops to the input's aspect ratio, which needs both sides covered."""
    if meta is None or meta.imgsz is None:
        return None
    height, width = meta.imgsz
    return Letterbox(height, width) if meta.ultralytics else FixedShape(height, width)
