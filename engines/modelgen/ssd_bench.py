"""SSD-MobileNetV2 300x300 (COCO, 90 classes) with random weights, for benchmarks.

The graph follows the TF Object Detection API's ``ssd_mobilenet_v2_coco``
config, so that it costs what the real model costs:

* resize to 300x300 (bilinear), scale pixels to [-1, 1];
* MobileNetV2 (alpha 1.0): 3x3/2 stem, the 17 inverted-residual blocks of the
  standard (t, c, n, s) table, 1x1 to 1280 channels; ReLU6; batch norm is
  folded into each convolution's bias (see calibration below);
* feature maps: 19x19x576 (expansion output of block 13), 10x10x1280 (last
  layer), then extra layers 1x1 conv + depthwise 3x3/2 + 1x1 conv to
  5x5x512, 3x3x256, 2x2x256, 1x1x128 (``use_depthwise: true``);
* 3x3 convolutional box predictor per map (3 anchors on the first, 6 on the
  others: 1917 anchors), 4 box codes and 91 logits (background + 90) each;
* SSD anchors (scales 0.2..0.95, ratios 1, 2, 1/2, 3, 1/3), Faster R-CNN box
  decoding with scale factors (10, 10, 5, 5), sigmoid scores and
  ``combined_non_max_suppression`` (IoU 0.6, 100 per class, 100 in total).

Weights are seeded Gaussian (He) kernels. Without trained batch norm the
activations would drift layer by layer, so at construction the model runs a
calibration batch once and rescales each layer's kernel and bias per output
channel (data-dependent init, i.e. batch norm folded with calibration
statistics): pre-activations get mean 0 and std 1, box codes std 1, and class
logits mean -5 / std 1.2 on the calibration batch, so that on the shapes
images roughly 10-80 of the 100 detections per image score above 0.5.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from engines.modelgen.images import draw_shapes_image

INPUT_SIZE = 300
NUM_CLASSES = 90
MAX_DETECTIONS = 100
BOX_SCALES = (10.0, 10.0, 5.0, 5.0)
"""Faster R-CNN box coder scale factors for (ty, tx, th, tw)."""

#: MobileNetV2 inverted-residual table: expansion t, output channels c, repeats n, stride s.
MOBILENET_V2_BLOCKS: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
FIRST_MAP_BLOCK = 13
"""The block whose expansion output (19x19x576) is the first SSD feature map."""
EXTRA_LAYER_DEPTHS = (512, 256, 256, 128)
ANCHORS_PER_MAP = (3, 6, 6, 6, 6, 6)
FEATURE_MAP_SIZES = (19, 10, 5, 3, 2, 1)
LOGIT_MEAN, LOGIT_STD = -5.0, 1.2

#: COCO's 90 category ids and names (the 80 used ones plus the 10 unused ids).
COCO_LABELS: tuple[str, ...] = (
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",
    "fire hydrant",
    "street sign",
    "stop sign",
    "parking meter",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "hat",
    "backpack",
    "umbrella",
    "shoe",
    "eye glasses",
    "handbag",
    "tie",
    "suitcase",
    "frisbee",
    "skis",
    "snowboard",
    "sports ball",
    "kite",
    "baseball bat",
    "baseball glove",
    "skateboard",
    "surfboard",
    "tennis racket",
    "bottle",
    "plate",
    "wine glass",
    "cup",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut",
    "cake",
    "chair",
    "couch",
    "potted plant",
    "bed",
    "mirror",
    "dining table",
    "window",
    "desk",
    "toilet",
    "door",
    "tv",
    "laptop",
    "mouse",
    "remote",
    "keyboard",
    "cell phone",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    "blender",
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy bear",
    "hair drier",
    "toothbrush",
)


def ssd_anchors(
    sizes: tuple[int, ...] = FEATURE_MAP_SIZES,
    min_scale: float = 0.2,
    max_scale: float = 0.95,
    aspect_ratios: tuple[float, ...] = (1.0, 2.0, 0.5, 3.0, 1.0 / 3.0),
) -> np.ndarray:
    """``[A, 4]`` float32 anchors ``(ycenter, xcenter, height, width)``, normalised.

    Same layout as the OD API's ``ssd_anchor_generator`` with
    ``reduce_boxes_in_lowest_layer``: per map, row-major grid cells, and per
    cell its anchors, matching a conv output reshaped ``[B, h*w*anchors, ...]``.
    """
    count = len(sizes)
    scales = [min_scale + (max_scale - min_scale) * i / (count - 1) for i in range(count)]
    scales.append(1.0)
    maps = []
    for i, size in enumerate(sizes):
        if i == 0:
            shapes = [(0.1, 1.0), (scales[0], 2.0), (scales[0], 0.5)]
        else:
            shapes = [(scales[i], r) for r in aspect_ratios]
            shapes.append((math.sqrt(scales[i] * scales[i + 1]), 1.0))
        dims = np.array([(s / math.sqrt(r), s * math.sqrt(r)) for s, r in shapes], np.float32)
        centres = (np.arange(size, dtype=np.float32) + 0.5) / size
        cy, cx = np.meshgrid(centres, centres, indexing="ij")
        grid = np.stack([cy.ravel(), cx.ravel()], axis=1)  # [size*size, 2]
        per_cell = np.concatenate(
            [np.repeat(grid, len(shapes), axis=0), np.tile(dims, (size * size, 1))], axis=1
        )
        maps.append(per_cell)
    return np.concatenate(maps, axis=0).astype(np.float32)


def decode_boxes(codes: tf.Tensor, anchors: tf.Tensor) -> tf.Tensor:
    """Faster R-CNN box decoding: codes ``[B, A, 4]`` (ty, tx, th, tw) -> ``[B, A, 4]``
    normalised ``(ymin, xmin, ymax, xmax)``, clipped to the image."""
    ty, tx, th, tw = tf.unstack(codes / tf.constant(BOX_SCALES), axis=-1)
    ya, xa, ha, wa = tf.unstack(anchors, axis=-1)
    yc, xc = ty * ha + ya, tx * wa + xa
    h, w = tf.exp(th) * ha, tf.exp(tw) * wa
    boxes = tf.stack([yc - h / 2, xc - w / 2, yc + h / 2, xc + w / 2], axis=-1)
    return tf.clip_by_value(boxes, 0.0, 1.0)


class ConvLayer(tf.Module):
    """One convolution (regular or depthwise) with a bias and optional ReLU6.

    Kernels are HWIO (``[k, k, in, out]``; depthwise ``[k, k, in, 1]``).
    """

    def __init__(
        self,
        rng: np.random.Generator,
        kernel_size: int,
        channels_in: int,
        channels_out: int,
        stride: int = 1,
        depthwise: bool = False,
        relu6: bool = True,
        target_mean: float = 0.0,
        target_std: float = 1.0,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        self.stride, self.depthwise, self.relu6 = stride, depthwise, relu6
        self.target_mean, self.target_std = target_mean, target_std
        fan_in = kernel_size * kernel_size * (1 if depthwise else channels_in)
        shape = (kernel_size, kernel_size, channels_in, 1 if depthwise else channels_out)
        kernel = rng.standard_normal(shape, dtype=np.float32) * np.float32(math.sqrt(2.0 / fan_in))
        self.kernel = tf.Variable(kernel, name="kernel")
        self.bias = tf.Variable(tf.zeros([channels_out]), name="bias")

    def _convolve(self, x: tf.Tensor) -> tf.Tensor:
        strides = [1, self.stride, self.stride, 1]
        if self.depthwise:
            return tf.nn.depthwise_conv2d(x, self.kernel, strides, "SAME")
        return tf.nn.conv2d(x, self.kernel, strides, "SAME")

    def calibrate(self, x: tf.Tensor) -> None:
        """Rescale kernel and bias per output channel so that the pre-activation on
        the calibration batch `x` has mean `target_mean` and std `target_std`.

        The channel variance is blended with the layer's mean variance so that
        the 1x1 maps (few samples per channel) do not get extreme scales.
        """
        y = self._convolve(x)
        mean, var = tf.nn.moments(y, axes=[0, 1, 2])
        std = tf.sqrt(0.5 * var + 0.5 * tf.reduce_mean(var) + 1e-6)
        scale = self.target_std / std
        kernel_scale = scale[:, tf.newaxis] if self.depthwise else scale
        self.kernel.assign(self.kernel * kernel_scale)
        self.bias.assign(self.target_mean - mean * scale)

    def __call__(self, x: tf.Tensor, calibrate: bool = False) -> tf.Tensor:
        if calibrate:
            self.calibrate(x)
        y = tf.nn.bias_add(self._convolve(x), self.bias)
        return tf.nn.relu6(y) if self.relu6 else y


class InvertedResidual(tf.Module):
    """MobileNetV2 block: 1x1 expand (t > 1), depthwise 3x3, linear 1x1 project."""

    def __init__(
        self,
        rng: np.random.Generator,
        channels_in: int,
        channels_out: int,
        expansion: int,
        stride: int,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        hidden = channels_in * expansion
        self.expand = ConvLayer(rng, 1, channels_in, hidden) if expansion != 1 else None
        self.depthwise = ConvLayer(rng, 3, hidden, hidden, stride=stride, depthwise=True)
        self.project = ConvLayer(rng, 1, hidden, channels_out, relu6=False)
        self.residual = stride == 1 and channels_in == channels_out

    def __call__(self, x: tf.Tensor, calibrate: bool = False) -> tuple[tf.Tensor, tf.Tensor]:
        """Returns (block output, expansion output)."""
        expanded = self.expand(x, calibrate) if self.expand is not None else x
        y = self.project(self.depthwise(expanded, calibrate), calibrate)
        return (x + y if self.residual else y), expanded


class SsdMobileNetV2Bench(tf.Module):
    """The benchmark detector; `detect` maps uint8 ``[B, H, W, 3]`` to the OD API outputs."""

    def __init__(self, seed: int = 0, calibration_images: np.ndarray | None = None) -> None:
        """Build seeded random weights, then calibrate them.

        Args:
            seed: weight seed; the same seed gives the same model.
            calibration_images: uint8 ``[B, H, W, 3]`` used to normalise the
                activations; by default a fixed batch of smooth random images.
        """
        super().__init__(name="ssd_mobilenet_v2")
        rng = np.random.default_rng(seed)
        self.stem = ConvLayer(rng, 3, 3, 32, stride=2)
        blocks = []
        channels = 32
        for expansion, out, repeats, stride in MOBILENET_V2_BLOCKS:
            for i in range(repeats):
                blocks.append(
                    InvertedResidual(rng, channels, out, expansion, stride if i == 0 else 1)
                )
                channels = out
        self.blocks = blocks
        self.last = ConvLayer(rng, 1, channels, 1280)
        extras = []
        channels = 1280
        for depth in EXTRA_LAYER_DEPTHS:
            extras.append(
                [
                    ConvLayer(rng, 1, channels, depth // 2),
                    ConvLayer(rng, 3, depth // 2, depth // 2, stride=2, depthwise=True),
                    ConvLayer(rng, 1, depth // 2, depth),
                ]
            )
            channels = depth
        self.extras = extras
        map_channels = (6 * 96, 1280, *EXTRA_LAYER_DEPTHS)
        self.box_heads = [
            ConvLayer(rng, 3, c, a * 4, relu6=False)
            for c, a in zip(map_channels, ANCHORS_PER_MAP, strict=True)
        ]
        self.class_heads = [
            ConvLayer(
                rng,
                3,
                c,
                a * (NUM_CLASSES + 1),
                relu6=False,
                target_mean=LOGIT_MEAN,
                target_std=LOGIT_STD,
            )
            for c, a in zip(map_channels, ANCHORS_PER_MAP, strict=True)
        ]
        self.anchors = tf.constant(ssd_anchors())
        if calibration_images is None:
            calibration_images = default_calibration_images(seed)
        self.features(tf.constant(calibration_images), calibrate=True)

    def features(self, images: tf.Tensor, calibrate: bool = False) -> tuple[tf.Tensor, tf.Tensor]:
        """Box codes ``[B, 1917, 4]`` and class logits ``[B, 1917, 91]``."""
        x = tf.image.resize(tf.cast(images, tf.float32), [INPUT_SIZE, INPUT_SIZE])
        x = x * (2.0 / 255.0) - 1.0
        x = self.stem(x, calibrate)
        maps = []
        for index, block in enumerate(self.blocks):
            x, expanded = block(x, calibrate)
            if index == FIRST_MAP_BLOCK:
                maps.append(expanded)
        x = self.last(x, calibrate)
        maps.append(x)
        for layers in self.extras:
            for layer in layers:
                x = layer(x, calibrate)
            maps.append(x)
        batch = tf.shape(images)[0]
        codes = [
            tf.reshape(head(m, calibrate), [batch, -1, 4])
            for head, m in zip(self.box_heads, maps, strict=True)
        ]
        logits = [
            tf.reshape(head(m, calibrate), [batch, -1, NUM_CLASSES + 1])
            for head, m in zip(self.class_heads, maps, strict=True)
        ]
        return tf.concat(codes, axis=1), tf.concat(logits, axis=1)

    def detect(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        """uint8 ``[B, H, W, 3]`` RGB -> OD API outputs (float32, N = 100):
        ``detection_boxes`` [B,N,4], ``detection_scores`` [B,N],
        ``detection_classes`` [B,N] (1..90), ``num_detections`` [B],
        ``raw_detection_boxes`` [B,1917,4], ``raw_detection_scores`` [B,1917,91]."""
        codes, logits = self.features(images)
        boxes = decode_boxes(codes, self.anchors)
        scores = tf.sigmoid(logits)
        nms = tf.image.combined_non_max_suppression(
            boxes[:, :, tf.newaxis, :],
            scores[:, :, 1:],
            max_output_size_per_class=MAX_DETECTIONS,
            max_total_size=MAX_DETECTIONS,
            iou_threshold=0.6,
            score_threshold=1e-8,
            clip_boxes=True,
        )
        return {
            "detection_boxes": nms.nmsed_boxes,
            "detection_scores": nms.nmsed_scores,
            "detection_classes": nms.nmsed_classes + 1.0,
            "num_detections": tf.cast(nms.valid_detections, tf.float32),
            "raw_detection_boxes": boxes,
            "raw_detection_scores": scores,
        }


def default_calibration_images(seed: int, count: int = 4) -> np.ndarray:
    """uint8 ``[count, 300, 300, 3]``: half smooth random colour fields with fine
    noise (a stand-in for photographs), half synthetic shapes images (what the
    benchmarks feed), so that the score statistics hold for both."""
    rng = np.random.default_rng(seed + 1)
    fields = count // 2
    coarse = rng.uniform(0.0, 255.0, size=(fields, 8, 8, 3)).astype(np.float32)
    smooth = tf.image.resize(coarse, [INPUT_SIZE, INPUT_SIZE], method="bicubic").numpy()
    noisy = np.clip(smooth + rng.normal(0.0, 20.0, size=smooth.shape), 0, 255).astype(np.uint8)
    shapes = [
        np.asarray(draw_shapes_image(rng, INPUT_SIZE, INPUT_SIZE, empty_probability=0.0)[0])
        for _ in range(count - fields)
    ]
    return np.concatenate([noisy, np.stack(shapes)], axis=0)
