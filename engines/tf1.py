"""`tensorflow_detection`: a TF1 `frozen_inference_graph.pb`.

The graph is imported once into a `wrap_function` and pruned to a concrete
function from `image_tensor:0` to the detection outputs: TF2 runs it like any
other function, with no `Session` per request and no global graph state.
"""

from __future__ import annotations

from typing import Any

from engines.base import Engine
from engines.convention_types import REQUIRED_OUTPUTS
from engines.errors import ModelLoadFailed
from engines.repository import ModelSpec

INPUT_TENSOR = "image_tensor:0"


class TF1Engine(Engine):
    def __init__(self, spec: ModelSpec, device: str) -> None:
        import tensorflow as tf

        self.device = device
        graph_def = tf.compat.v1.GraphDef()
        try:
            graph_def.ParseFromString(spec.weights.read_bytes())
        except Exception as exc:
            raise ModelLoadFailed(
                f"{spec.name}: {spec.weights.name} is not a GraphDef: {exc}"
            ) from exc

        def import_graph() -> None:
            tf.compat.v1.import_graph_def(graph_def, name="")

        try:
            with tf.device(device):
                wrapped = tf.compat.v1.wrap_function(import_graph, [])
            graph = wrapped.graph
            image = graph.get_tensor_by_name(INPUT_TENSOR)
            fetches = {key: graph.get_tensor_by_name(f"{key}:0") for key in REQUIRED_OUTPUTS}
            self._function: Any = wrapped.prune(feeds=image, fetches=fetches)
        except (KeyError, ValueError) as exc:
            raise ModelLoadFailed(
                f"{spec.name}: the frozen graph lacks {INPUT_TENSOR} or a detection output: {exc}"
            ) from exc
        except Exception as exc:
            raise ModelLoadFailed(
                f"{spec.name}: the frozen graph cannot be imported: {exc}"
            ) from exc
        if image.shape.rank not in (None, 4):
            raise ModelLoadFailed(f"{spec.name}: {INPUT_TENSOR} is not [B, H, W, 3]")
        self.input_dtype = image.dtype
        self.fixed_batch = image.shape[0] if image.shape.rank == 4 else None

    def _call(self, tensor: Any) -> Any:
        return self._function(tensor)
