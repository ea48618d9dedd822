"""`tensorflow2_detection`: a TF2 SavedModel with a detection signature.

We call the `serving_default` signature, not the object's `__call__`: the
signature is what every export has, with a named input whose shape tells us
the batch size the model accepts, and named outputs that tell us whose
convention it follows (Object Detection API or Model Garden, see
engines/conventions.py).
"""

from __future__ import annotations

from typing import Any

from engines.base import Engine
from engines.conventions import resolve_convention
from engines.errors import InvalidModelConfig, ModelLoadFailed
from engines.repository import ModelSpec


def _spec_text(spec: Any) -> str:
    """A TensorSpec as "dtype[shape]", e.g. "uint8[?, ?, ?, 3]"."""
    shape = "?" if spec.shape.rank is None else ", ".join(str(d or "?") for d in spec.shape)
    return f"{spec.dtype.name}[{shape}]"


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
        takes = {name: _spec_text(s) for name, s in inputs.items()}
        if len(inputs) != 1 or next(iter(inputs.values())).shape.rank != 4:
            raise InvalidModelConfig(
                f"{spec.name}: serving_default takes {takes or 'nothing'}; expected one image "
                "input [B, H, W, 3] (a Model Garden export needs --input_type=image_tensor)"
            )
        ((self._input_name, input_spec),) = inputs.items()
        self.input_dtype = input_spec.dtype
        self.fixed_batch = input_spec.shape[0]
        self.convention = resolve_convention(
            spec.name,
            spec.config,
            takes,
            {name: _spec_text(s) for name, s in signature.structured_outputs.items()},
            spec.path,
        )

    def _call(self, tensor: Any) -> Any:
        return self._signature(**{self._input_name: tensor})
