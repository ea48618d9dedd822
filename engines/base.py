"""What every engine does alike: group images into model calls and split results.

An engine only knows how to run one uint8 [B, H, W, 3] array (`_run`). This
class decides how many calls that takes: where the model's batch dimension is
open, equal-sized images share one call (images of any size, where the
engine brings them to one input size itself: `uniform_input`); where it is fixed (most Object
Detection API exports take exactly one image), each image gets its own call.
Either way the caller gets one `RawDetections` per image, in input order.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from engines.boxes import RawDetections
from engines.convention_types import OD_API, Convention
from engines.errors import InferenceFailed, TfstreamError


class Engine(ABC):
    """A loaded model, ready to run. Not thread-safe for loading; `infer` may be
    called from one worker thread at a time per engine."""

    #: Images per model call the graph accepts; None means any number.
    fixed_batch: int | None = None
    #: The TensorFlow device the model was placed on, e.g. "/CPU:0", "/GPU:0".
    device: str = "/CPU:0"

    #: The input tensor's dtype (uint8 for image_tensor exports; some take float32).
    input_dtype: Any = None
    #: How to read the outputs, decided at load (engines/conventions.py).
    convention: Convention = OD_API
    #: Whether `_run` brings every image to one input size itself (an Ultralytics
    #: letterbox): then images of any sizes share a call, given to `_run` as a list.
    uniform_input: bool = False

    @abstractmethod
    def _call(self, tensor: Any) -> Any:
        """Run the graph on a tf.Tensor [B, H, W, 3]; return the signature's outputs by name."""

    def _run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        import tensorflow as tf

        with tf.device(self.device):
            tensor = tf.convert_to_tensor(batch)
            if self.input_dtype is not None and tensor.dtype != self.input_dtype:
                tensor = tf.cast(tensor, self.input_dtype)
            outputs = self._call(tensor)
        return {key: outputs[name].numpy() for key, name in self.convention.outputs.items()}

    def infer(self, images: Sequence[np.ndarray]) -> list[RawDetections]:
        """Detect objects in each uint8 [H, W, 3] image.

        Raises:
            InferenceFailed: the model raised; the whole call fails, since a
                shared batch has no per-image error.
        """
        results: list[RawDetections | None] = [None] * len(images)
        for indices in self._calls(images):
            batch = self._batch([images[i] for i in indices])
            try:
                outputs = self._run(batch)
            except TfstreamError:
                raise
            except Exception as exc:
                raise InferenceFailed(
                    f"the model failed on a batch of {len(indices)}: {exc}"
                ) from exc
            for row, index in enumerate(indices):
                results[index] = _row(outputs, row)
        return [r for r in results if r is not None]

    def _batch(self, images: list[np.ndarray]) -> Any:
        """Stack equal-sized images; pad a fixed batch > 1 with copies (their rows are
        dropped). A `uniform_input` engine gets them as they are, in a list."""
        if self.fixed_batch is not None and len(images) < self.fixed_batch:
            images = images + [images[-1]] * (self.fixed_batch - len(images))
        if self.uniform_input:
            return images
        if not all(isinstance(image, np.ndarray) for image in images):
            import tensorflow as tf

            # Decoded on the GPU (engines.decoders): stack there, no trip to the host.
            return tf.stack(images)  # type: ignore[no-any-return]
        if len(images) == 1:
            return images[0][np.newaxis]
        return np.stack(images)

    def _calls(self, images: Sequence[np.ndarray]) -> list[list[int]]:
        """Indices of the images that go through each model call."""
        if self.fixed_batch == 1:
            return [[i] for i in range(len(images))]
        by_shape: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for i, image in enumerate(images):
            by_shape[() if self.uniform_input else tuple(image.shape)].append(i)
        size = self.fixed_batch
        calls: list[list[int]] = []
        for indices in by_shape.values():
            if size is None:
                calls.append(indices)
            else:  # a fixed batch > 1 is filled exactly: chunks, the last one padded
                calls.extend(indices[i : i + size] for i in range(0, len(indices), size))
        return calls


def _row(outputs: dict[str, np.ndarray], row: int) -> RawDetections:
    count = np.asarray(outputs["num_detections"]).reshape(-1)[row]
    info = outputs.get("image_info")
    return RawDetections(
        boxes=np.asarray(outputs["detection_boxes"])[row].reshape(-1, 4),
        scores=np.asarray(outputs["detection_scores"])[row].reshape(-1),
        classes=np.asarray(outputs["detection_classes"])[row].reshape(-1),
        count=int(count),
        image_info=None if info is None else np.asarray(info)[row],
    )
