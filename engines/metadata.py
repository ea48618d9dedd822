"""`metadata.yaml`: what an Ultralytics export (and a KerasHub one, exported as
models/README.md says) records about itself, parsed; what follows from it is
decided elsewhere (engines/export_folder.py, yolo.py, keras_hub.py).

Ultralytics writes it next to `saved_model.pb`: `names` ({0: person, ...}),
`imgsz` ([h, w]), `task`, `stride`, `batch`, `end2end`, and the export `args`
of the format asked for (`saved_model`: batch, int8, keras, nms; `tflite`:
batch, half, int8, nms, fraction). The KerasHub recipe writes `names`,
`image_size`, `crop_to_aspect_ratio`, `pad_to_aspect_ratio` and
`bounding_box_format` as the model's image converter and detector hold them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engines.errors import InvalidModelConfig

METADATA_FILE = "metadata.yaml"
#: The tasks of Ultralytics' exports; only `detect` gives boxes tfstream can serve.
ULTRALYTICS_TASKS = ("detect", "segment", "pose", "obb", "classify")


@dataclass(frozen=True)
class ExportMetadata:
    names: dict[int, str]
    """Class id (as the model emits it) -> name."""
    imgsz: tuple[int, int] | None = None
    """[height, width] of the model input (Ultralytics' `imgsz`, KerasHub's `image_size`)."""
    ultralytics: bool = False
    """Ultralytics' (its exporter records `stride`, `task` and its `author`; a hand-written
    file with `task: detect` counts too)."""
    task: str | None = None
    end2end: bool | None = None
    nms: bool | None = None
    export_args: dict[str, Any] = field(default_factory=dict)
    """Ultralytics' `args`: the export options of the format it was asked for."""
    bounding_box_format: str | None = None
    """KerasHub: the detector's `bounding_box_format` (column order of `boxes`)."""
    crop_to_aspect_ratio: bool | None = None
    """KerasHub: the image converter's `crop_to_aspect_ratio`."""
    pad_to_aspect_ratio: bool | None = None
    """KerasHub: the image converter's `pad_to_aspect_ratio`."""

    @property
    def normalized_boxes(self) -> bool | None:
        """Whether an Ultralytics export's boxes are fractions of the input: the
        `tflite` / `edgetpu` exports normalise them (their saved_model too), the
        `saved_model` export does not; None where `args` does not tell."""
        if "keras" in self.export_args:  # only the saved_model format has it
            return False
        if {"half", "fraction"} & self.export_args.keys():  # tflite's, not saved_model's
            return True
        return None


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


def _size(raw: Any, key: str, source: str) -> tuple[int, int] | None:
    if raw is None:
        return None
    if isinstance(raw, int) and not isinstance(raw, bool):
        raw = [raw, raw]
    if (
        not isinstance(raw, list | tuple)
        or len(raw) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in raw)
    ):
        raise InvalidModelConfig(f"{source}: '{key}' must be [height, width], not {raw!r}")
    return int(raw[0]), int(raw[1])


def _flag(raw: dict[str, Any], key: str, source: str) -> bool | None:
    value = raw.get(key)
    if value is None or isinstance(value, bool):
        return value
    raise InvalidModelConfig(f"{source}: '{key}' must be true or false, not {value!r}")


def read_metadata(path: Path) -> ExportMetadata:
    """Parse an export's metadata.yaml.

    Raises:
        InvalidModelConfig: not YAML, not a mapping, `names` / `imgsz` /
            `image_size` / a flag malformed, `imgsz` and `image_size` disagreeing,
            or an Ultralytics `task` other than `detect` (named: a segment, pose,
            obb or classify export answers with something other than boxes).
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
    task = raw.get("task")
    if task is not None and task != "detect":
        kind = f"an Ultralytics {task} export" if task in ULTRALYTICS_TASKS else "an export"
        raise InvalidModelConfig(
            f"{source}: task {task!r}: {kind} does not answer with detection boxes; tfstream "
            "serves detect models only (export a detect model, e.g. yolo11n.pt)"
        )
    imgsz = _size(raw.get("imgsz"), "imgsz", source)
    image_size = _size(raw.get("image_size"), "image_size", source)
    if imgsz and image_size and imgsz != image_size:
        raise InvalidModelConfig(
            f"{source}: imgsz {list(imgsz)} and image_size {list(image_size)} disagree"
        )
    box_format = raw.get("bounding_box_format")
    return ExportMetadata(
        names=_names(raw.get("names"), source),
        imgsz=imgsz or image_size,
        ultralytics=(
            "stride" in raw
            or task is not None
            or "ultralytics" in str(raw.get("author", "")).lower()
        ),
        task=task,
        end2end=raw.get("end2end") if isinstance(raw.get("end2end"), bool) else None,
        nms=args.get("nms") if isinstance(args.get("nms"), bool) else None,
        export_args=dict(args),
        bounding_box_format=None if box_format is None else str(box_format).lower(),
        crop_to_aspect_ratio=_flag(raw, "crop_to_aspect_ratio", source),
        pad_to_aspect_ratio=_flag(raw, "pad_to_aspect_ratio", source),
    )
