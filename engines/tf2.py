"""`tensorflow2_detection`: a TF2 SavedModel as the Object Detection API exports it.

We call the `serving_default` signature, not the object's `__call__`: the
signature is what every export has, with a named input whose shape tells us
the batch size the model accepts.
"""

from __future__ import annotations

from typing import Any

from engines.base import OUTPUT_KEYS, Engine
from engines.errors import ModelLoadFailed
from engines.repository import ModelSpec


class TF2Engine(Engine):
    def __init__(self, spec: ModelSpec, device: str) -> None:
        import tensorflow as tf

        self.device = device
        try:
            with tf.device(device):
                self._loaded = tf.saved_model.load(str(spec.weights))
        except Exception as exc:
            raise ModelLoadFailed(f"{spec.name}: the SavedModel cannot be loaded: {exc}") from exc
        signature = getattr(self._loaded, "signatures", {}).get("serving_default")
        if signature is None:
            raise ModelLoadFailed(f"{spec.name}: the SavedModel has no 'serving_default' signature")
        self._signature: Any = signature
        _, inputs = signature.structured_input_signature
        if len(inputs) != 1:
            raise ModelLoadFailed(
                f"{spec.name}: serving_default takes {sorted(inputs)}; expected one image input"
            )
        ((self._input_name, input_spec),) = inputs.items()
        if input_spec.shape.rank != 4:
            raise ModelLoadFailed(f"{spec.name}: input {self._input_name} is not [B, H, W, 3]")
        self.input_dtype = input_spec.dtype
        self.fixed_batch = input_spec.shape[0]
        missing = [k for k in OUTPUT_KEYS if k not in signature.structured_outputs]
        if missing:
            raise ModelLoadFailed(f"{spec.name}: serving_default lacks the outputs {missing}")

    def _call(self, tensor: Any) -> Any:
        return self._signature(**{self._input_name: tensor})
