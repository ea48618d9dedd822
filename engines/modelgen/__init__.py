"""Generated TensorFlow detection models for tests, demos and benchmarks.

Real TF graphs, because model weights cannot be downloaded here. Most are
exported exactly like the TF Object Detection API exports (TF2 SavedModel,
TF1 frozen graph); the others in the layout of the exporter they stand for
(Model Garden's, Ultralytics', KerasHub's):

* ``shapes_tf2`` / ``shapes_tf1``: a hand-designed detector of the synthetic
  shapes images drawn by `images.draw_shapes_image` (4 classes);
* ``ssd_mobilenet_v2_bench``: SSD-MobileNetV2 300x300, 90 classes, random
  weights, for benchmarks; ``ssd_mobilenet_v2_bench_b1`` is the same model
  exported with a fixed batch of 1, as most Object Detection API exports are;
* ``retinanet_mg_pixels`` / ``retinanet_mg_normalized``: a tiny RetinaNet with
  random weights, exported by Model Garden's own exporter in both of its box
  conventions (`model_garden.py`; needs Model Garden, a dev dependency);
* ``yolo11_shapes_raw`` / ``yolo11_shapes_nms`` / ``yolo26_shapes_end2end`` /
  ``keras_hub_shapes``: the shapes detector in the layouts of Ultralytics' and
  KerasHub's exports, with their `metadata.yaml` (`exporter_layouts.py`).

Attributes are imported lazily so that ``import engines.modelgen`` does not
load TensorFlow.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "generate_models": "engines.modelgen.generate",
    "export_shapes_tf2": "engines.modelgen.export",
    "export_shapes_tf1": "engines.modelgen.export",
    "export_ssd_mobilenet_v2_bench": "engines.modelgen.export",
    "export_retinanet": "engines.modelgen.model_garden",
    "draw_shapes_image": "engines.modelgen.images",
    "write_test_images": "engines.modelgen.images",
    "box_iou": "engines.modelgen.images",
    "SHAPE_CLASSES": "engines.modelgen.shapes",
    "ShapesDetector": "engines.modelgen.shapes",
    "SsdMobileNetV2Bench": "engines.modelgen.ssd_bench",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'engines.modelgen' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
