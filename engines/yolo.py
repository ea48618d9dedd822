"""Ultralytics YOLO exports (`model.export(format="saved_model")`), read as
Ultralytics' own predict reads them.

The export takes float32 [B, H, W, 3] RGB in 0..1 of one fixed size (640x640
by default; other shapes fail inside the graph). Ultralytics letterboxes the
image into it: an aspect-keeping bilinear resize (OpenCV `INTER_LINEAR` on
uint8), then grey 114 padding split evenly, top/left = round(pad/2 - 0.1).
`letterbox` does exactly that with OpenCV, so the pixels the model sees are
Ultralytics' pixels, and `resize_record` inverts it as its `scale_boxes` does.
(Images decoded on a GPU, engines/decoders.py, come back to host memory for
it: exact pixels are worth that copy.)

Three output layouts, one float32 output each:

* raw (YOLO11; YOLO26 with `nms=None`): [B, 4 + C, N], rows cx, cy, w, h in
  input pixels then C class scores (after sigmoid, no objectness). tfstream
  does Ultralytics' NMS here, on the model's device: best class per anchor,
  score > threshold, class-wise greedy NMS at `iou_threshold` (0.7), at most
  `max_detections` boxes (300).
* `nms=True` and YOLO26 end2end: [B, K, 6] = x1, y1, x2, y2 (input pixels),
  score, class, by score; padding rows have score 0 (and leftover boxes).

Boxes of all three are regressed, not clipped: they may reach past the input,
which is why their convention allows a margin (engines/boxes.py) before they
are clipped to the image, as Ultralytics clips them.

The `*_saved_model/` folder that the `tflite` / `edgetpu` exports leave behind
has the same layouts with boxes in fractions of the input (their head divides
by the input size): read from metadata.yaml's export `args` (only the
saved_model format records `keras`; only tflite `half` and `fraction`), else
from the first outputs' range (pixel boxes of a real head reach far past 1.5),
and scaled back to input pixels here.

Every image is letterboxed to the one input size, so images of any original
size share an engine call (`Engine.uniform_input`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from engines.config import OUTPUT_NAMES, BoxFormat, OutputConvention
from engines.convention_types import EXPORTER_MARGIN, Convention, parse_spec, xyxy_to_yxyx
from engines.errors import InvalidModelConfig
from engines.metadata import ExportMetadata
from engines.resizer import Letterbox

# -- Ultralytics' predict defaults and constants, in one place ---------------------------
#: Its NMS IoU threshold (`iou=0.7`).
DEFAULT_IOU = 0.7
#: Its confidence threshold (`conf=0.25`), in percent as config.json says it.
CONFIDENCE = 25.0
#: Its most boxes per image (`max_det=300`).
MAX_DETECTIONS = 300
#: Its letterbox padding value.
PAD_VALUE = 114
#: Its class offset of class-wise NMS (`max_wh`): boxes of different classes are
#: moved this far apart so that one NMS never compares them.
CLASS_OFFSET = 7680.0
#: Largest box coordinate, in input sizes, that still reads as normalised outputs.
NORMALIZED_RANGE = 1.5

RAW = "raw"
NMS = "nms"
END2END = "end2end"


def _paddings(height: int, width: int, in_h: int, in_w: int) -> tuple[int, int, int, int]:
    """(new height, new width, top, left) of Ultralytics' LetterBox(auto=False)."""
    new_w, new_h = Letterbox(height=in_h, width=in_w).target(width, height)
    top = round((in_h - new_h) / 2 - 0.1)
    left = round((in_w - new_w) / 2 - 0.1)
    return new_h, new_w, top, left


def letterbox(image: np.ndarray, in_h: int, in_w: int) -> np.ndarray:
    """uint8 [h, w, 3] -> uint8 [in_h, in_w, 3], as Ultralytics' LetterBox(auto=False)."""
    import cv2

    height, width = image.shape[:2]
    new_h, new_w, top, left = _paddings(height, width, in_h, in_w)
    if (new_w, new_h) != (width, height):
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    bottom, right = in_h - new_h - top, in_w - new_w - left
    return cv2.copyMakeBorder(
        np.ascontiguousarray(image),
        top,
        bottom,
        left,
        right,
        cv2.BORDER_CONSTANT,
        value=(PAD_VALUE, PAD_VALUE, PAD_VALUE),
    )


def resize_record(height: int, width: int, in_h: int, in_w: int) -> np.ndarray:
    """Model Garden's image_info [4, 2] for a letterboxed image: original size,
    input size, scale, offset (minus the padding), so that
    original = (input + offset) / scale, exactly as Ultralytics' `scale_boxes`
    maps boxes back: one gain for both sides, min(in_h / h, in_w / w), and the
    padding round((in - size * gain) / 2 - 0.1) from the unrounded size."""
    gain = min(in_h / height, in_w / width)
    pad_y = round((in_h - height * gain) / 2 - 0.1)
    pad_x = round((in_w - width * gain) / 2 - 0.1)
    return np.array(
        [[height, width], [in_h, in_w], [gain, gain], [-pad_y, -pad_x]],
        np.float64,
    )


def detect_layout(outputs: dict[str, str]) -> tuple[str, str] | None:
    """(variant, output name) where the signature is an Ultralytics export's, else None.

    `outputs` maps output names to "dtype[shape]" (engines/conventions.py).
    """
    if len(outputs) != 1:
        return None
    ((name, text),) = outputs.items()
    dtype, shape = parse_spec(text)
    if dtype != "float32" or len(shape) != 3:
        return None
    rows, cols = shape[1], shape[2]
    if cols == 6 and rows not in (None, 6):
        return NMS, name
    if rows is not None and cols is not None and 4 < rows < cols:
        return RAW, name
    return None


def ultralytics_convention(
    model: str, outputs: dict[str, str], meta: ExportMetadata | None, forced: bool
) -> Convention | None:
    """The convention of an Ultralytics export, or None where the outputs are
    not one (an error instead where config.json `forced` it).

    An output that merely has the shape is not enough: the reading needs
    Ultralytics' metadata.yaml (its exporter's, or a hand-written one with
    `task: detect`), unless config.json forces `output_convention: ultralytics`.

    Raises:
        InvalidModelConfig: forced but not the layout; no metadata.yaml; a raw
            output whose rows are not 4 + the number of class names (a segment
            or pose head, or names of another model).
    """
    found = detect_layout(outputs)
    if found is None:
        if not forced:
            return None
        raise InvalidModelConfig(
            f"{model}: output_convention ultralytics needs one float32 output [B, 4 + classes, "
            f"anchors] (raw) or [B, K, 6] (nms / end2end); the signature returns {outputs}"
        )
    variant, name = found
    if meta is None:
        raise InvalidModelConfig(
            f"{model}: an Ultralytics export ({variant} output {name}) without its "
            "metadata.yaml: copy the metadata.yaml its exporter wrote next to saved_model.pb "
            "into the model folder"
        )
    if not meta.ultralytics and not forced:
        raise InvalidModelConfig(
            f"{model}: the output {name} ({outputs[name]}) has the shape of an Ultralytics "
            f"{variant} export, but metadata.yaml is not Ultralytics' (no task, stride or "
            "author): copy the metadata.yaml its exporter wrote, add 'task: detect' to a "
            'hand-written one, or set "output_convention": "ultralytics" in config.json'
        )
    if variant == RAW:
        rows = parse_spec(outputs[name])[1][1]
        if rows is not None and rows - 4 != len(meta.names):
            raise InvalidModelConfig(
                f"{model}: the raw output {name} has {rows} rows, but 4 box rows + "
                f"{len(meta.names)} class names in metadata.yaml make {4 + len(meta.names)}: "
                "not a detect head for these names (a segment or pose export, or the "
                "metadata.yaml of another model)"
            )
    if variant == NMS and meta.end2end and not meta.nms:
        variant = END2END
    return Convention(
        family=OutputConvention.ULTRALYTICS,
        box_format=BoxFormat.INPUT_PIXELS,
        outputs={key: key for key in OUTPUT_NAMES},
        variant=variant,
        margin=EXPORTER_MARGIN,
        source_output=name,
        normalized=meta.normalized_boxes,
    )


class UltralyticsAdapter:
    """Letterbox in, Ultralytics' post-processing out, in the engine's call."""

    def __init__(
        self,
        convention: Convention,
        input_size: tuple[int, int],
        iou_threshold: float | None,
        max_detections: int,
    ) -> None:
        # iou_threshold on an export with its NMS inside is refused by
        # engines/tf2.py `_adapter`, which names the model.
        self.convention = convention
        self.input_size = input_size
        self.iou_threshold = DEFAULT_IOU if iou_threshold is None else iou_threshold
        self.max_detections = max_detections
        self.normalized = convention.normalized
        self._nms: Any = None

    def run(self, batch: Sequence[Any], call: Callable[[Any], Any]) -> dict[str, np.ndarray]:
        """Outputs under our names (OUTPUT_NAMES) for uint8 images of any sizes."""
        import tensorflow as tf

        images = [np.asarray(i.numpy() if hasattr(i, "numpy") else i) for i in batch]
        in_h, in_w = self.input_size
        boxed = np.stack([letterbox(image, in_h, in_w) for image in images])
        info = np.stack([resize_record(*image.shape[:2], in_h, in_w) for image in images])
        pixels = boxed.astype(np.float32)
        pixels /= 255.0  # in place: `astype(...) / 255` writes a second float copy per batch
        output = call(tf.constant(pixels))[self.convention.source_output]
        scale = np.array([in_w, in_h, in_w, in_h], np.float32)
        if self.convention.variant == RAW:
            self._decide_unit(output[:, :4])
            if self.normalized:
                output = tf.concat([output[:, :4] * scale[:, np.newaxis], output[:, 4:]], axis=1)
            boxes, scores, classes, count = (t.numpy() for t in self._raw_nms(output))
        else:
            rows = np.array(output, np.float32)
            self._decide_unit(rows[..., :4][rows[..., 4] > 0])
            if self.normalized:
                rows[..., :4] *= scale
            boxes, scores, classes, count = _sorted_rows(rows)
        return {
            "detection_boxes": boxes,
            "detection_scores": scores,
            "detection_classes": classes,
            "num_detections": count,
            "image_info": info,
        }

    def _decide_unit(self, coords: Any) -> None:
        """Where metadata.yaml did not say whether the boxes are normalised: the first
        outputs with any box decide (a real head's pixel boxes reach far past
        NORMALIZED_RANGE; all-zero boxes read alike either way)."""
        if self.normalized is not None:
            return
        values = np.abs(np.asarray(coords))
        top = float(values.max()) if values.size else 0.0
        if top > 0:
            self.normalized = top <= NORMALIZED_RANGE

    def _raw_nms(self, output: Any) -> tuple[Any, Any, Any, Any]:
        if self._nms is None:
            self._nms = raw_nms_function(self.iou_threshold, self.max_detections)
        return self._nms(output)  # type: ignore[no-any-return]


def _sorted_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """[B, K, 6] x1, y1, x2, y2, score, class -> boxes (ymin, xmin, ymax, xmax),
    scores, classes, count: rows by score, the real ones (score > 0) first."""
    rows = np.asarray(rows, np.float32)
    order = np.argsort(-rows[..., 4], axis=1, kind="stable")
    rows = np.take_along_axis(rows, order[..., np.newaxis], axis=1)
    count = (rows[..., 4] > 0).sum(axis=1).astype(np.int32)
    return xyxy_to_yxyx(rows[..., :4]), rows[..., 4], rows[..., 5], count


def raw_nms_function(iou_threshold: float, max_detections: int) -> Callable[[Any], Any]:
    """A tf.function: raw [B, 4 + C, N] -> (boxes [B, M, 4] ymin, xmin, ymax, xmax
    in input pixels, scores [B, M], classes [B, M] float, count [B] int32),
    M = `max_detections`, as Ultralytics' `non_max_suppression` (multi_label
    off, agnostic off): each anchor keeps its best class; boxes of score > 0
    go through greedy NMS class by class (offset trick); the best M survive.

    The score threshold is 0 here: which boxes above any threshold t survive
    greedy NMS does not depend on the boxes below t, so the request's
    confidence, applied afterwards, gives the boxes Ultralytics' NMS at that
    confidence gives.
    """
    import tensorflow as tf

    def one(pred: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
        pred = tf.transpose(pred)  # [N, 4 + C]
        cx, cy, w, h = tf.unstack(pred[:, :4], axis=1)
        dw, dh = w / 2, h / 2
        boxes = tf.stack([cy - dh, cx - dw, cy + dh, cx + dw], axis=1)
        scores = tf.reduce_max(pred[:, 4:], axis=1)
        classes = tf.cast(tf.argmax(pred[:, 4:], axis=1), tf.float32)
        shifted = boxes + (classes * CLASS_OFFSET)[:, tf.newaxis]
        keep = tf.image.non_max_suppression(
            shifted, scores, max_detections, iou_threshold=iou_threshold, score_threshold=0.0
        )
        count = tf.shape(keep)[0]
        pad = [[0, max_detections - count]]
        return (
            tf.pad(tf.gather(boxes, keep), [*pad, [0, 0]]),
            tf.pad(tf.gather(scores, keep), pad),
            tf.pad(tf.gather(classes, keep), pad),
            count,
        )

    @tf.function(reduce_retracing=True)
    def nms(raw: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
        return tf.map_fn(
            one,
            tf.cast(raw, tf.float32),
            fn_output_signature=(
                tf.TensorSpec([max_detections, 4], tf.float32),
                tf.TensorSpec([max_detections], tf.float32),
                tf.TensorSpec([max_detections], tf.float32),
                tf.TensorSpec([], tf.int32),
            ),
        )

    return nms
