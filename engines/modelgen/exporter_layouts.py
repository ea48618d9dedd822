"""The shapes detector in the layouts of Ultralytics' and KerasHub's exports.

Real Ultralytics and KerasHub weights cannot be downloaded here, so these are
small TF graphs with exactly those exports' signatures, output layouts and
`metadata.yaml`, around the hand-designed shapes detector (`shapes.py`): what
they find in the model input is what the drawn objects are, so a served box
can be checked against where the test drew the object.

* ``yolo11_shapes_raw``: input ``images`` float32 [1, 640, 640, 3] (0..1 RGB,
  letterboxed by the caller), output ``output_0`` float32 [1, 4 + 4, 8400]:
  cx, cy, w, h in input pixels, then the 4 class scores. Each object gives
  three anchors: its box (score s), the box moved 2 px (0.9 s, which NMS must
  drop), and its box for the next class (0.2 s, which class-wise NMS keeps);
  all other anchors are zeros.
* ``yolo11_shapes_nms`` (``nms=True``): output_0 [1, 300, 6] = x1, y1, x2, y2,
  score, class by score, 0.25 baked in; padding rows score 0 with a leftover box.
* ``yolo26_shapes_end2end`` (``end2end: true``): the same columns, top 300 by
  score, no threshold: the objects, their 0.2 s next-class rows, then rows of
  score 0.001 at a fixed box.
* ``yolo11_shapes_raw_normalized`` / ``yolo11_shapes_nms_normalized``: what
  Ultralytics 8.3's ``format="tflite"`` leaves in its ``*_saved_model/`` folder:
  the same layouts with boxes in fractions of the input, and metadata.yaml's
  `args` those of the tflite format (``half``, ``fraction``, no ``keras``);
  ``export_yolo_shapes(..., normalized=True, args=False)`` writes no `args`
  (tfstream must tell from the outputs' range).
* ``yolo11_shapes_raw_b4``: the raw layout with a fixed batch of 4.
* ``keras_hub_shapes``: an ExportArchive around preprocessor + `predict_step`: input uint8
  [1, None, None, 3], centre-cropped to 512x512's aspect ratio and resized by
  `keras.ops.image.resize(crop_to_aspect_ratio=True)` as KerasHub's
  ImageConverter does, outputs ``boxes`` [1, 100, 4] yxyx in input pixels,
  ``confidence``, ``labels`` int32 (0-based), ``num_detections``; rows past it -1.
  ``keras_hub_shapes_pad`` pads to the aspect ratio instead
  (`pad_to_aspect_ratio=True`), ``keras_hub_shapes_stretch`` only resizes, and
  ``keras_hub_shapes_xyxy`` is the crop one with `bounding_box_format: xyxy`.
  metadata.yaml holds what the recipe copies from the model: `names`,
  `image_size`, `crop_to_aspect_ratio`, `pad_to_aspect_ratio`,
  `bounding_box_format`.

No config.json and no object-detection.pbtxt: the folder is what the exporter
writes (metadata.yaml with `names`), which is how tfstream must take it.
"""

from __future__ import annotations

from pathlib import Path

import tensorflow as tf

from engines.modelgen.images import SHAPE_CLASSES
from engines.modelgen.shapes import ShapesDetector

YOLO_SIZE = (640, 640)
ANCHORS = 8400
ROWS = 300
KERAS_HUB_SIZE = (512, 512)
KERAS_HUB_ROWS = 100
#: The KerasHub decoder's confidence threshold, baked into its export.
KERAS_HUB_THRESHOLD = 0.5
#: The Ultralytics nms=True export's baked-in confidence.
NMS_CONFIDENCE = 0.25
#: Where the end2end export's score-0.001 filler rows lie (x1, y1, x2, y2, input pixels).
FILLER_BOX = (8.0, 8.0, 40.0, 40.0)
NAMES = {cls.id - 1: cls.display_name for cls in SHAPE_CLASSES}
NUM_CLASSES = len(SHAPE_CLASSES)


def _yolo_metadata(
    variant: str, normalized: bool = False, args: bool = True, batch: int = 1
) -> str:
    """metadata.yaml as Ultralytics' exporter writes it (the keys tfstream reads, and
    more); `normalized`: as its tflite export writes it (tflite's args)."""
    names = "\n".join(f"  {i}: {name}" for i, name in NAMES.items())
    end2end = "true" if variant == "end2end" else "false"
    nms = "true" if variant == "nms" else "false"
    if normalized:  # the tflite format's arguments
        export_args = (
            f"  batch: {batch}\n  half: false\n  int8: false\n  nms: {nms}\n  fraction: 1.0\n"
        )
    else:  # the saved_model format's
        export_args = f"  batch: {batch}\n  int8: false\n  keras: false\n  nms: {nms}\n"
    return (
        "description: Ultralytics YOLO model (tfstream generated, shapes detector)\n"
        "author: Ultralytics\nlicense: AGPL-3.0 License\nversion: 8.3.0\n"
        f"stride: 32\ntask: detect\nbatch: {batch}\nimgsz:\n- 640\n- 640\n"
        f"names:\n{names}\n"
        + (f"args:\n{export_args}" if args else "")
        + f"channels: 3\nend2end: {end2end}\n"
    )


GEOMETRIES = ("crop", "pad", "stretch")


def _keras_hub_metadata(geometry: str = "crop", box_format: str = "yxyx") -> str:
    names = "\n".join(f"  {i}: {name}" for i, name in NAMES.items())
    height, width = KERAS_HUB_SIZE
    crop = "true" if geometry == "crop" else "false"
    pad = "true" if geometry == "pad" else "false"
    return (
        f"names:\n{names}\nimage_size: [{height}, {width}]\n"
        f"crop_to_aspect_ratio: {crop}\npad_to_aspect_ratio: {pad}\n"
        f"bounding_box_format: {box_format}\n"
    )


def _objects(detector: ShapesDetector, pixels: tf.Tensor, size: tuple[int, int]) -> tuple:
    """(x1, y1, x2, y2 [B, C] in input pixels, scores [B, C]) of the shapes in `pixels` (0..255)."""
    boxes, scores = detector.per_class(pixels)
    height, width = float(size[0]), float(size[1])
    ymin, xmin, ymax, xmax = tf.unstack(boxes, axis=-1)
    return xmin * width, ymin * height, xmax * width, ymax * height, scores


class _YoloModule(tf.Module):
    def __init__(self, variant: str, normalized: bool = False) -> None:
        super().__init__(name="yolo_export")
        self.variant = variant
        self.normalized = normalized
        self.detector = ShapesDetector()

    def raw(self, images: tf.Tensor) -> tf.Tensor:
        """[B, 4 + C, ANCHORS] as YOLO11's head."""
        x1, y1, x2, y2, s = _objects(self.detector, images * 255.0, YOLO_SIZE)
        cx, cy, w, h = (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1
        eye = tf.eye(NUM_CLASSES)  # class c's score row
        nxt = tf.roll(eye, shift=1, axis=1)  # class c + 1's
        anchors = []
        for dx, factor, classes in ((0.0, 1.0, eye), (2.0, 0.9, eye), (0.0, 0.2, nxt)):
            box = tf.stack([cx + dx, cy, w, h], axis=1)  # [B, 4, C]
            cls = tf.einsum("bc,ck->bkc", s * factor, classes)  # [B, C_out, C]
            anchors.append(tf.concat([box, cls], axis=1))
        used = tf.concat(anchors, axis=2)  # [B, 4 + C, 3C]
        batch = tf.shape(images)[0]
        rest = tf.zeros([batch, 4 + NUM_CLASSES, ANCHORS - 3 * NUM_CLASSES])
        out = tf.concat([used, rest], axis=2)
        if self.normalized:  # Ultralytics' tflite head divides by the input size
            height, width = YOLO_SIZE
            norm = tf.constant([width, height, width, height] + [1.0] * NUM_CLASSES)
            out = out / norm[tf.newaxis, :, tf.newaxis]
        return out

    def rows(self, images: tf.Tensor) -> tf.Tensor:
        """[B, ROWS, 6] as the nms=True / end2end exports."""
        x1, y1, x2, y2, s = _objects(self.detector, images * 255.0, YOLO_SIZE)
        own = tf.range(NUM_CLASSES, dtype=tf.float32)[tf.newaxis] + tf.zeros_like(s)
        nxt = tf.math.floormod(own + 1.0, NUM_CLASSES)
        boxes = tf.stack([x1, y1, x2, y2], axis=-1)  # [B, C, 4]
        batch = tf.shape(images)[0]
        if self.variant == "nms":
            scores = tf.where(s > NMS_CONFIDENCE, s, 0.0)
            rows = tf.concat([boxes, scores[..., tf.newaxis], own[..., tf.newaxis]], axis=-1)
            filler_score = 0.0
        else:
            rows = tf.concat(
                [
                    tf.concat([boxes, s[..., tf.newaxis], own[..., tf.newaxis]], axis=-1),
                    tf.concat([boxes, 0.2 * s[..., tf.newaxis], nxt[..., tf.newaxis]], axis=-1),
                ],
                axis=1,
            )
            filler_score = 0.001
        order = tf.argsort(rows[..., 4], axis=1, direction="DESCENDING", stable=True)
        rows = tf.gather(rows, order, batch_dims=1)
        real = rows[..., 4:5] > 0
        # nms=True: empty rows keep a leftover box; end2end: low-score filler rows.
        leftover = tf.constant([*FILLER_BOX, filler_score, 0.0])
        rows = tf.where(real, rows, leftover)
        filler = tf.tile(leftover[tf.newaxis, tf.newaxis], [batch, ROWS - tf.shape(rows)[1], 1])
        out = tf.concat([rows, filler], axis=1)
        if self.normalized:
            height, width = YOLO_SIZE
            norm = tf.constant([width, height, width, height, 1.0, 1.0])
            out = out / norm
        return out

    def serve(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        out = self.raw(images) if self.variant == "raw" else self.rows(images)
        return {"output_0": out}


def export_yolo_shapes(
    model_dir: Path, variant: str, *, normalized: bool = False, args: bool = True, batch: int = 1
) -> Path:
    """An Ultralytics-layout export of the shapes detector (`variant`: raw, nms, end2end).

    `normalized`: boxes in fractions of the input, as the saved_model of the tflite
    export; `args`: whether metadata.yaml records the export arguments; `batch`: the
    fixed batch of the signature.
    """
    if variant not in ("raw", "nms", "end2end"):
        raise ValueError(f"unknown variant {variant!r}")
    model_dir = Path(model_dir)
    module = _YoloModule(variant, normalized)
    spec = tf.TensorSpec([batch, *YOLO_SIZE, 3], tf.float32, name="images")
    module.serving = tf.function(module.serve, input_signature=[spec])
    signature = module.serving.get_concrete_function()
    tf.saved_model.save(module, str(model_dir), signatures={"serving_default": signature})
    (model_dir / "metadata.yaml").write_text(
        _yolo_metadata(variant, normalized, args, batch), encoding="utf-8"
    )
    return model_dir


class _KerasHubModule(tf.Module):
    def __init__(self, geometry: str, box_format: str) -> None:
        super().__init__(name="keras_hub_export")
        self.geometry = geometry
        self.box_format = box_format
        self.detector = ShapesDetector()

    @tf.function(input_signature=[tf.TensorSpec([1, None, None, 3], tf.uint8, name="inputs")])
    def serve(self, inputs: tf.Tensor) -> dict[str, tf.Tensor]:
        from keras import ops

        resized = ops.image.resize(
            tf.cast(inputs, tf.float32),
            KERAS_HUB_SIZE,
            crop_to_aspect_ratio=self.geometry == "crop",
            pad_to_aspect_ratio=self.geometry == "pad",
        )
        x1, y1, x2, y2, s = _objects(self.detector, resized, KERAS_HUB_SIZE)
        columns = [x1, y1, x2, y2] if self.box_format == "xyxy" else [y1, x1, y2, x2]
        boxes = tf.stack(columns, axis=-1)
        labels = tf.range(NUM_CLASSES)[tf.newaxis] + tf.zeros_like(s, tf.int32)
        order = tf.argsort(s, axis=1, direction="DESCENDING", stable=True)
        s = tf.gather(s, order, batch_dims=1)
        boxes = tf.gather(boxes, order, batch_dims=1)
        labels = tf.gather(labels, order, batch_dims=1)
        keep = s > KERAS_HUB_THRESHOLD
        pad = [[0, 0], [0, KERAS_HUB_ROWS - NUM_CLASSES]]
        boxes = tf.where(keep[..., tf.newaxis], boxes, -1.0)
        return {
            "boxes": tf.pad(boxes, [*pad, [0, 0]], constant_values=-1.0),
            "confidence": tf.pad(tf.where(keep, s, -1.0), pad, constant_values=-1.0),
            "labels": tf.pad(tf.where(keep, labels, -1), pad, constant_values=-1),
            "num_detections": tf.reduce_sum(tf.cast(keep, tf.int32), axis=1),
        }


def export_keras_hub_shapes(
    model_dir: Path, geometry: str = "crop", box_format: str = "yxyx"
) -> Path:
    """The shapes detector as a KerasHub ExportArchive around preprocessor + predict_step,
    its converter cropping, padding or stretching (`geometry`) to 512x512."""
    if geometry not in GEOMETRIES or box_format not in ("yxyx", "xyxy"):
        raise ValueError(f"unknown geometry {geometry!r} or box format {box_format!r}")
    model_dir = Path(model_dir)
    module = _KerasHubModule(geometry, box_format)
    signature = module.serve.get_concrete_function()
    tf.saved_model.save(module, str(model_dir), signatures={"serving_default": signature})
    (model_dir / "metadata.yaml").write_text(
        _keras_hub_metadata(geometry, box_format), encoding="utf-8"
    )
    return model_dir


def export_keras_hub_raw_head(model_dir: Path) -> Path:
    """What `model.export(path)` of a KerasHub RetinaNet gives: the raw head
    (`bbox_regression` [B, A, 4], `cls_logits` [B, A, C]); tfstream must refuse it."""
    model_dir = Path(model_dir)

    class RawHead(tf.Module):
        @tf.function(
            input_signature=[tf.TensorSpec([None, *KERAS_HUB_SIZE, 3], tf.float32, name="images")]
        )
        def serve(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
            pooled = tf.reduce_mean(images, axis=[1, 2])  # [B, 3]
            batch, anchors = tf.shape(images)[0], 49104
            return {
                "bbox_regression": tf.zeros([batch, anchors, 4]) + pooled[:, :1, None],
                "cls_logits": tf.zeros([batch, anchors, NUM_CLASSES]),
            }

    module = RawHead()
    signature = module.serve.get_concrete_function()
    tf.saved_model.save(module, str(model_dir), signatures={"serving_default": signature})
    (model_dir / "metadata.yaml").write_text(_keras_hub_metadata(), encoding="utf-8")
    return model_dir
