"""KerasHub object detectors, exported with `keras.export.ExportArchive` around
their preprocessor and `model.predict_step` (docs/model-formats.md has the
export code; `predict_step` alone does not preprocess: KerasHub's `predict`
runs the preprocessor on the data before it).

Such an export takes the image as it is (uint8, any size, batch fixed by the
export) and runs the model's own preprocessor and box decoder: the image is
centre-cropped to the model input's aspect ratio and resized (KerasHub's
`ImageConverter`, i.e. `keras.ops.image.resize(crop_to_aspect_ratio=True)`),
and the outputs are `boxes` [B, M, 4] in pixels of the model input (the
model's `bounding_box_format`, yxyx unless metadata.yaml says xyxy),
`confidence` [B, M], `labels` [B, M] int32 (0-based) and `num_detections`
[B]; rows past num_detections are -1. The boxes are not clipped to the
input. The input size is not in the signature (it takes any size), so
metadata.yaml's `imgsz` or config.json's `input_size` gives it;
`crop_record` then maps boxes back as Keras cropped.

`model.export(path)` instead gives the raw head (`bbox_regression`,
`cls_logits`) without its anchors or decoder settings: refused with how to
export.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from engines.config import BoxFormat, OutputConvention
from engines.conventions import OUTPUT_NAMES, Convention
from engines.errors import InvalidModelConfig
from engines.metadata import ExportMetadata

DECODED = ("boxes", "confidence", "labels", "num_detections")
RAW_HEAD = ("bbox_regression", "cls_logits")
#: How far past the model input a decoded box may reach, in input sizes: the
#: decoder does not clip its anchors' regressed boxes (they are clipped here,
#: to the image, as for Ultralytics).
MARGIN = 1.0

HOW_TO_EXPORT = (
    "export it with its preprocessor and decoder instead: archive = "
    "keras.export.ExportArchive(); archive.track(model); archive.add_endpoint('serve', "
    "lambda images: model.predict_step(model.preprocessor(images)), "
    "input_signature=[tf.TensorSpec([1, None, None, 3], tf.uint8)]); archive.write_out(path); "
    "then write metadata.yaml with names and imgsz (docs/model-formats.md, KerasHub)"
)


def keras_hub_convention(
    model: str,
    outputs: dict[str, str],
    config_size: tuple[int, int] | None,
    meta: ExportMetadata | None,
    forced: bool,
) -> Convention | None:
    """The convention of a decoded KerasHub export, or None where the outputs are not one.

    Raises:
        InvalidModelConfig: a raw KerasHub export (`model.export`), forced but
            not the layout, or no input size known.
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
    if target_size(config_size, meta) is None:
        raise InvalidModelConfig(
            f"{model}: a KerasHub export takes images of any size and resizes them to its "
            "input size, which it does not record: give it as imgsz: [height, width] in "
            'metadata.yaml or "input_size": [height, width] in config.json'
        )
    return Convention(
        family=OutputConvention.KERAS_HUB,
        box_format=BoxFormat.INPUT_PIXELS,
        outputs={key: key for key in OUTPUT_NAMES},
        variant="decoded",
        margin=MARGIN,
    )


def target_size(
    config_size: tuple[int, int] | None, meta: ExportMetadata | None
) -> tuple[int, int] | None:
    return config_size or (meta.imgsz if meta is not None else None)


def crop_record(height: int, width: int, in_h: int, in_w: int) -> np.ndarray:
    """Model Garden's image_info [4, 2] for Keras' centre crop to the input's
    aspect ratio then resize: original = (input + offset) / scale.

    The crop is computed as Keras computes it (float32 products, truncated).
    """
    f32 = np.float32
    crop_h = max(min(height, int(f32(width * in_h) / f32(in_w))), 1)
    crop_w = max(min(width, int(f32(height * in_w) / f32(in_h))), 1)
    top = int(f32(height - crop_h) / f32(2))
    left = int(f32(width - crop_w) / f32(2))
    scale = np.array([in_h / crop_h, in_w / crop_w], np.float64)
    return np.array(
        [[height, width], [in_h, in_w], scale, np.array([top, left]) * scale], np.float64
    )


class KerasHubAdapter:
    """The image in as it is; the decoder's rows out, with their crop record."""

    def __init__(self, input_size: tuple[int, int], input_dtype: Any, xyxy: bool) -> None:
        self.input_size = input_size
        self.input_dtype = input_dtype
        self.xyxy = xyxy

    def run(self, batch: Any, call: Callable[[Any], Any]) -> dict[str, np.ndarray]:
        import tensorflow as tf

        tensor = tf.convert_to_tensor(batch)
        height, width = int(tensor.shape[1]), int(tensor.shape[2])
        out = call(tf.cast(tensor, self.input_dtype))
        boxes = out["boxes"].numpy().astype(np.float32)
        if self.xyxy:
            boxes = boxes[..., [1, 0, 3, 2]]
        info = crop_record(height, width, *self.input_size)
        return {
            "detection_boxes": boxes,
            "detection_scores": out["confidence"].numpy(),
            "detection_classes": out["labels"].numpy(),
            "num_detections": out["num_detections"].numpy().reshape(-1),
            "image_info": np.broadcast_to(info, (boxes.shape[0], 4, 2)),
        }
