"""KerasHub object detectors, exported with `keras.export.ExportArchive` around
their preprocessor and `model.predict_step` (docs/model-formats.md has the
export code; `predict_step` alone does not preprocess: KerasHub's `predict`
runs the preprocessor on the data before it).

Such an export takes the image as it is (uint8, any size, batch fixed by the
export) and runs the model's own preprocessor and box decoder. The image
converter resizes it to its `image_size` one of three ways
(`keras.ops.image.resize`): centre-cropped to the input's aspect ratio
(`crop_to_aspect_ratio`), padded to it, centred (`pad_to_aspect_ratio`), or
stretched (neither). The outputs are `boxes` [B, M, 4] in pixels of the model
input (in the detector's `bounding_box_format`), `confidence` [B, M], `labels`
[B, M] int32 (0-based) and `num_detections` [B]; rows past num_detections are
-1; boxes are not clipped to the input.

None of that is in the signature (it takes any size), so the recipe writes the
converter's `image_size`, `crop_to_aspect_ratio` and `pad_to_aspect_ratio`
and the detector's `bounding_box_format` into metadata.yaml, and all four are
required: a box mapped back with the wrong geometry is a plausible wrong box.
`resize_record` maps boxes back as Keras resized.

`model.export(path)` instead gives the raw head (`bbox_regression`,
`cls_logits`) without its anchors or decoder settings: refused with how to
export.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from engines.config import OUTPUT_NAMES, BoxFormat, OutputConvention
from engines.convention_types import EXPORTER_MARGIN, Convention, xyxy_to_yxyx
from engines.errors import InvalidModelConfig
from engines.metadata import ExportMetadata

DECODED = ("boxes", "confidence", "labels", "num_detections")
RAW_HEAD = ("bbox_regression", "cls_logits")
CROP, PAD, STRETCH = "crop", "pad", "stretch"
BOX_FORMATS = ("yxyx", "xyxy")

HOW_TO_EXPORT = (
    "export it with its preprocessor and decoder instead: archive = "
    "keras.export.ExportArchive(); archive.track(model); archive.add_endpoint('serve', "
    "lambda images: model.predict_step(model.preprocessor(images)), "
    "input_signature=[tf.TensorSpec([1, None, None, 3], tf.uint8)]); archive.write_out(path); "
    "then write metadata.yaml (docs/model-formats.md, KerasHub)"
)
METADATA_RECIPE = (
    "write them from the model as docs/model-formats.md (KerasHub) does: converter = "
    "model.preprocessor.image_converter; names, image_size: list(converter.image_size), "
    "crop_to_aspect_ratio: converter.crop_to_aspect_ratio, pad_to_aspect_ratio: "
    "converter.pad_to_aspect_ratio, bounding_box_format: model.bounding_box_format"
)


def geometry(model: str, meta: ExportMetadata | None) -> str:
    """How the export's converter resizes images: crop, pad or stretch.

    Raises:
        InvalidModelConfig: metadata.yaml lacks a field the geometry needs, or
            says something else (both flags, a box format other than yxyx / xyxy,
            no image_size: a converter that does not resize).
    """
    if meta is None:
        raise InvalidModelConfig(
            f"{model}: a KerasHub export needs its metadata.yaml (names, image_size, "
            f"crop_to_aspect_ratio, pad_to_aspect_ratio, bounding_box_format); {METADATA_RECIPE}"
        )
    fields = {
        "image_size": meta.imgsz,
        "crop_to_aspect_ratio": meta.crop_to_aspect_ratio,
        "pad_to_aspect_ratio": meta.pad_to_aspect_ratio,
        "bounding_box_format": meta.bounding_box_format,
    }
    missing = [name for name, value in fields.items() if value is None]
    if missing:
        raise InvalidModelConfig(
            f"{model}: a KerasHub export's metadata.yaml must say {', '.join(missing)} "
            f"(how its image converter resizes and its boxes' order are not in the "
            f"signature; without image_size the converter does not resize, which tfstream "
            f"does not serve: set image_size on the converter and export again); "
            f"{METADATA_RECIPE}"
        )
    if meta.bounding_box_format not in BOX_FORMATS:
        raise InvalidModelConfig(
            f"{model}: metadata.yaml's bounding_box_format {meta.bounding_box_format!r} is "
            f"not served ({' or '.join(BOX_FORMATS)}, in pixels): build the detector with "
            "bounding_box_format='yxyx' and export again"
        )
    if meta.crop_to_aspect_ratio and meta.pad_to_aspect_ratio:
        raise InvalidModelConfig(
            f"{model}: crop_to_aspect_ratio and pad_to_aspect_ratio are both true, which "
            "Keras' resize refuses: copy the converter's real flags into metadata.yaml"
        )
    return CROP if meta.crop_to_aspect_ratio else PAD if meta.pad_to_aspect_ratio else STRETCH


def keras_hub_convention(
    model: str, outputs: dict[str, str], meta: ExportMetadata | None, forced: bool
) -> Convention | None:
    """The convention of a decoded KerasHub export, or None where the outputs are not one.

    Raises:
        InvalidModelConfig: a raw KerasHub export (`model.export`), forced but
            not the layout, or metadata.yaml not saying its geometry (`geometry`).
    """
    if all(name in outputs for name in RAW_HEAD):
        raise InvalidModelConfig(
            f"{model}: a raw KerasHub export ({', '.join(RAW_HEAD)}: per-anchor outputs "
            f"without the anchors or the decoder to read them); {HOW_TO_EXPORT}"
        )
    if not all(name in outputs for name in DECODED):
        if not forced:
            return None
        raise InvalidModelConfig(
            f"{model}: output_convention keras_hub needs the outputs {list(DECODED)} of an "
            f"ExportArchive around predict_step; the signature returns {outputs}"
        )
    return Convention(
        family=OutputConvention.KERAS_HUB,
        box_format=BoxFormat.INPUT_PIXELS,
        outputs={key: key for key in OUTPUT_NAMES},
        variant=geometry(model, meta),
        margin=EXPORTER_MARGIN,
    )


def _f32_int(value: float) -> int:
    """Keras' `tf.cast(float32, "int32")`: truncated float32 arithmetic."""
    return int(np.float32(value))


def resize_record(geometry: str, height: int, width: int, in_h: int, in_w: int) -> np.ndarray:
    """Model Garden's image_info [4, 2] for Keras' resize of a `height` x `width`
    image to `in_h` x `in_w`: original = (input + offset) / scale.

    crop: the centred crop to the input's aspect ratio, then the resize. pad: the
    image padded evenly on both sides (Keras pads `start` rows above and below,
    so the padded height is height + 2 * start), then the resize. stretch: the
    resize alone. Crop and pad sizes are computed as Keras computes them
    (float32 products, truncated).
    """
    f32 = np.float32
    if geometry == CROP:
        crop_h = max(min(height, _f32_int(f32(width * in_h) / f32(in_w))), 1)
        crop_w = max(min(width, _f32_int(f32(height * in_w) / f32(in_h))), 1)
        top = _f32_int(f32(height - crop_h) / f32(2))
        left = _f32_int(f32(width - crop_w) / f32(2))
        scale = np.array([in_h / crop_h, in_w / crop_w], np.float64)
        offset = np.array([top, left]) * scale
    elif geometry == PAD:
        pad_h = max(height, _f32_int(f32(width * in_h) / f32(in_w)))
        pad_w = max(width, _f32_int(f32(height * in_w) / f32(in_h)))
        top = _f32_int(f32(pad_h - height) / f32(2))
        left = _f32_int(f32(pad_w - width) / f32(2))
        scale = np.array([in_h / (height + 2 * top), in_w / (width + 2 * left)], np.float64)
        offset = -np.array([top, left]) * scale
    else:
        scale = np.array([in_h / height, in_w / width], np.float64)
        offset = np.zeros(2)
    return np.array([[height, width], [in_h, in_w], scale, offset], np.float64)


def crop_record(height: int, width: int, in_h: int, in_w: int) -> np.ndarray:
    """`resize_record` of the centre crop (KerasHub's default converter)."""
    return resize_record(CROP, height, width, in_h, in_w)


class KerasHubAdapter:
    """The image in as it is; the decoder's rows out, with their resize record."""

    def __init__(
        self, input_size: tuple[int, int], input_dtype: Any, xyxy: bool, geometry: str
    ) -> None:
        self.input_size = input_size
        self.input_dtype = input_dtype
        self.xyxy = xyxy
        self.geometry = geometry

    def run(self, batch: Any, call: Callable[[Any], Any]) -> dict[str, np.ndarray]:
        import tensorflow as tf

        tensor = tf.convert_to_tensor(batch)
        height, width = int(tensor.shape[1]), int(tensor.shape[2])
        out = call(tf.cast(tensor, self.input_dtype))
        boxes = out["boxes"].numpy().astype(np.float32)
        if self.xyxy:
            boxes = xyxy_to_yxyx(boxes)
        info = resize_record(self.geometry, height, width, *self.input_size)
        return {
            "detection_boxes": boxes,
            "detection_scores": out["confidence"].numpy(),
            "detection_classes": out["labels"].numpy(),
            "num_detections": out["num_detections"].numpy().reshape(-1),
            "image_info": np.broadcast_to(info, (boxes.shape[0], 4, 2)),
        }
