"""`tensorflow2_detection`: a TF2 SavedModel with a detection signature.

We call the `serving_default` signature, not the object's `__call__`: the
signature is what every export has, with a named input whose shape tells us
the batch size the model accepts, and named outputs that tell us whose
convention it follows (Object Detection API or Model Garden, see
engines/conventions.py). Ultralytics and KerasHub exports get an adapter
(engines/yolo.py, engines/keras_hub.py) that does their preprocessing and
post-processing around the signature call, in the same engine call.
"""

from __future__ import annotations

from typing import Any

from engines.base import Engine
from engines.config import OutputConvention
from engines.conventions import Convention, resolve_convention
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
            spec.metadata,
        )
        self._adapter = _adapter(spec, self.convention, input_spec)
        # A letterboxing adapter makes every image the one input size: any sizes share a call.
        self.uniform_input = self.convention.family is OutputConvention.ULTRALYTICS

    def _call(self, tensor: Any) -> Any:
        return self._signature(**{self._input_name: tensor})

    def _run(self, batch: Any) -> dict[str, Any]:
        if self._adapter is None:
            return super()._run(batch)
        import tensorflow as tf

        with tf.device(self.device):
            return self._adapter.run(batch, self._call)  # type: ignore[no-any-return]


def _adapter(spec: ModelSpec, convention: Convention, input_spec: Any) -> Any:
    """The pre/post-processing of an Ultralytics or KerasHub export, else None.

    Raises:
        InvalidModelConfig: iou_threshold on a model whose NMS is not ours, or
            an input whose size cannot be known or is given twice differently.
    """
    from engines.export_folder import model_input_size

    config = spec.config
    if convention.family is OutputConvention.ULTRALYTICS:
        from engines.yolo import MAX_DETECTIONS, RAW, UltralyticsAdapter

        if convention.variant != RAW and config.iou_threshold is not None:
            raise InvalidModelConfig(
                f"{spec.name}: iou_threshold is set in config.json, but this Ultralytics "
                f"export ({convention.variant}) has its NMS inside the graph, with the IoU it "
                "was exported with; remove iou_threshold, or export without nms=True"
            )
        signature = (input_spec.shape[1], input_spec.shape[2])
        size = model_input_size(spec.name, config, spec.metadata, signature)
        if size is None:
            raise InvalidModelConfig(
                f"{spec.name}: the Ultralytics export's input size is open and its "
                "metadata.yaml has no imgsz: export with a fixed imgsz"
            )
        return UltralyticsAdapter(
            convention, size, config.iou_threshold, max(config.predictions, MAX_DETECTIONS)
        )
    if config.iou_threshold is not None:
        raise InvalidModelConfig(
            f"{spec.name}: iou_threshold is set in config.json, but tfstream runs no NMS for "
            f"this model ({convention.describe()}): its export does; remove iou_threshold"
        )
    if convention.family is OutputConvention.KERAS_HUB:
        from engines.keras_hub import KerasHubAdapter

        meta = spec.metadata
        size = model_input_size(spec.name, config, meta)
        # keras_hub_convention refused a model whose metadata.yaml lacks these.
        assert size is not None and meta is not None
        xyxy = meta.bounding_box_format == "xyxy"
        return KerasHubAdapter(size, input_spec.dtype, xyxy, convention.variant)
    return None
