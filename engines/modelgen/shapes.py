"""A real (hand-designed, not trained) detector of the synthetic shapes images.

The test images (see `images.py`) are a light, slightly noisy, nearly grey
background with at most one saturated object per class. Every class is one
colour and one shape, so the detector can be a short chain of ordinary TF ops
that runs unchanged inside a SavedModel or a frozen TF1 graph:

1. smooth the RGB image with a 3x3 average (noise, JPEG blocking);
2. per class, a chroma feature ``min(w1 . rgb, w2 . rgb)`` (for red:
   ``min(r - g, r - b)``). The feature is ~0 on grey background and ~150-220 on
   the object; being (piecewise) linear in the colour, a pixel half object /
   half background sits at half the object's value, so thresholding at half the
   image's peak puts the edge where the true edge is, even after JPEG chroma
   subsampling blurred it;
3. the box is the extent of the rows/columns holding at least
   `min_line_pixels` mask pixels, so isolated stray pixels do not grow it;
4. the score combines the shape test (fill ratio mask-area / box-area: ~1.0 for
   rectangles, pi/4 for discs) and the purity (share of the class's mask
   pixels that lie inside the box); absent classes score 0.

All tensors are batch-major: images ``[B, H, W, 3]`` uint8 RGB, boxes
``[B, N, 4]`` as normalised ``(ymin, xmin, ymax, xmax)`` like the TF Object
Detection API.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from engines.modelgen.images import SHAPE_CLASSES, ShapeClass

__all__ = ["MAX_DETECTIONS", "SHAPE_CLASSES", "ShapeClass", "ShapesDetector"]

#: Detections per image in the outputs; rows past `num_detections` are zeros.
MAX_DETECTIONS = 100


def _first_true(flags: tf.Tensor, axis: int) -> tf.Tensor:
    """Index of the first True along `axis` (0 where there is none), int32."""
    return tf.argmax(tf.cast(flags, tf.int32), axis=axis, output_type=tf.int32)


def _last_true(flags: tf.Tensor, axis: int) -> tf.Tensor:
    """Index of the last True along `axis` (length-1 where there is none), int32."""
    length = tf.shape(flags)[axis]
    return length - 1 - _first_true(tf.reverse(flags, axis=[axis]), axis)


def _in_range(length: tf.Tensor, start: tf.Tensor, stop: tf.Tensor) -> tf.Tensor:
    """``[B, L, C]`` float 1/0: position l of axis 1 lies in ``[start, stop)`` (both ``[B, C]``)."""
    index = tf.range(length)[tf.newaxis, :, tf.newaxis]
    inside = (index >= start[:, tf.newaxis, :]) & (index < stop[:, tf.newaxis, :])
    return tf.cast(inside, tf.float32)


class ShapesDetector(tf.Module):
    """The detector's parameters (tf.Variables, saved with the model) and its graph.

    `detect` is plain TF and batch/size agnostic: call it from a `tf.function`
    with whatever input signature the export needs.
    """

    def __init__(
        self,
        classes: tuple[ShapeClass, ...] = SHAPE_CLASSES,
        max_detections: int = MAX_DETECTIONS,
        name: str = "shapes_detector",
    ) -> None:
        super().__init__(name=name)
        self.num_classes = len(classes)
        self.max_detections = max_detections
        self.class_ids = tf.constant([c.id for c in classes], tf.float32)
        chroma = np.zeros((1, 1, 3, 2 * len(classes)), np.float32)
        for i, cls in enumerate(classes):
            for j, weights in enumerate(cls.chroma):
                chroma[0, 0, :, 2 * i + j] = weights
        # A 1x1 convolution kernel: RGB -> two projections per class.
        self.chroma_kernel = tf.Variable(chroma, trainable=False, name="chroma_kernel")
        self.expected_fill = tf.Variable(
            [c.expected_fill for c in classes],
            dtype=tf.float32,
            trainable=False,
            name="expected_fill",
        )
        # Feature units are 0..255 intensity differences; background stays < ~25.
        self.threshold_floor = tf.Variable(60.0, trainable=False, name="threshold_floor")
        self.threshold_ratio = tf.Variable(0.5, trainable=False, name="threshold_ratio")
        self.min_line_pixels = tf.Variable(3.0, trainable=False, name="min_line_pixels")
        self.min_area = tf.Variable(64.0, trainable=False, name="min_area")
        self.fill_tolerance = tf.Variable(0.1, trainable=False, name="fill_tolerance")

    def class_masks(self, images: tf.Tensor) -> tf.Tensor:
        """``[B, H, W, C]`` float 1/0 mask of each class's colour."""
        pixels = tf.cast(images, tf.float32)
        smooth = tf.nn.avg_pool2d(pixels, ksize=3, strides=1, padding="SAME")
        projections = tf.nn.conv2d(smooth, self.chroma_kernel, strides=1, padding="SAME")
        shape = tf.shape(projections)
        pairs = tf.reshape(projections, [shape[0], shape[1], shape[2], self.num_classes, 2])
        features = tf.reduce_min(pairs, axis=-1)
        peak = tf.reduce_max(features, axis=[1, 2])
        threshold = tf.maximum(self.threshold_floor, self.threshold_ratio * peak)
        return tf.cast(features > threshold[:, tf.newaxis, tf.newaxis, :], tf.float32)

    def per_class(self, images: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """One candidate per class: boxes ``[B, C, 4]`` normalised, scores ``[B, C]``.

        Absent classes have score 0 and an all-zero box.
        """
        mask = self.class_masks(images)
        height, width = tf.shape(mask)[1], tf.shape(mask)[2]
        row_counts = tf.reduce_sum(mask, axis=2)  # [B, H, C]
        col_counts = tf.reduce_sum(mask, axis=1)  # [B, W, C]
        rows = row_counts >= self.min_line_pixels
        cols = col_counts >= self.min_line_pixels
        top, bottom = _first_true(rows, 1), _last_true(rows, 1) + 1  # [B, C], pixels
        left, right = _first_true(cols, 1), _last_true(cols, 1) + 1
        row_in = _in_range(height, top, bottom)
        col_in = _in_range(width, left, right)
        inside = tf.reduce_sum(
            tf.reduce_sum(mask * row_in[:, :, tf.newaxis, :], axis=1) * col_in, 1
        )
        total = tf.reduce_sum(mask, axis=[1, 2])
        box_h = tf.cast(bottom - top, tf.float32)
        box_w = tf.cast(right - left, tf.float32)
        fill = inside / tf.maximum(box_h * box_w, 1.0)
        purity = inside / tf.maximum(total, 1.0)
        shape_score = tf.exp(-tf.square((fill - self.expected_fill) / self.fill_tolerance))
        present = (
            tf.reduce_any(rows, axis=1)
            & tf.reduce_any(cols, axis=1)
            & (inside >= self.min_area)
            & (box_h >= 4.0)
            & (box_w >= 4.0)
        )
        scores = tf.where(present, shape_score * purity, 0.0)
        h, w = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
        boxes = tf.stack(
            [
                tf.cast(top, tf.float32) / h,
                tf.cast(left, tf.float32) / w,
                tf.cast(bottom, tf.float32) / h,
                tf.cast(right, tf.float32) / w,
            ],
            axis=-1,
        )
        boxes = tf.where(present[:, :, tf.newaxis], boxes, 0.0)
        return boxes, scores

    def detect(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        """Run on uint8 ``[B, H, W, 3]`` RGB; returns the TF OD API output dict.

        Keys: ``detection_boxes`` [B,N,4], ``detection_scores`` [B,N] (descending),
        ``detection_classes`` [B,N] (1-based ids as float; 1.0 on padding rows,
        as real exports do), ``num_detections`` [B], ``detection_multiclass_scores``
        [B,N,C+1] (column 0 = background), ``detection_anchor_indices`` [B,N],
        ``raw_detection_boxes`` [B,C,4] and ``raw_detection_scores`` [B,C,C+1]
        (one "anchor" per class). All float32, N = `max_detections`.
        """
        boxes, scores = self.per_class(images)
        batch = tf.shape(boxes)[0]
        order = tf.argsort(scores, axis=1, direction="DESCENDING", stable=True)
        sorted_scores = tf.gather(scores, order, batch_dims=1)
        valid = sorted_scores > 0.0
        sorted_boxes = tf.gather(boxes, order, batch_dims=1)
        classes = tf.gather(self.class_ids, order)
        classes = tf.where(valid, classes, 1.0)
        anchors = tf.where(valid, tf.cast(order, tf.float32), 0.0)
        # Per anchor (= per class) scores over [background, class 1..C].
        raw_scores = tf.concat(
            [tf.zeros([batch, self.num_classes, 1]), tf.linalg.diag(scores)], axis=2
        )
        multiclass = tf.where(
            valid[:, :, tf.newaxis], tf.gather(raw_scores, order, batch_dims=1), 0.0
        )
        pad = self.max_detections - self.num_classes

        def padded(tensor: tf.Tensor, value: float = 0.0) -> tf.Tensor:
            paddings = [[0, 0], [0, pad]] + [[0, 0]] * (len(tensor.shape) - 2)
            return tf.pad(tensor, paddings, constant_values=value)

        return {
            "detection_boxes": padded(sorted_boxes),
            "detection_scores": padded(sorted_scores),
            "detection_classes": padded(classes, 1.0),
            "num_detections": tf.reduce_sum(tf.cast(valid, tf.float32), axis=1),
            "detection_multiclass_scores": padded(multiclass),
            "detection_anchor_indices": padded(anchors),
            "raw_detection_boxes": boxes,
            "raw_detection_scores": raw_scores,
        }
