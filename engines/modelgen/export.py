"""Write model folders in the layouts of the TF Object Detection API exports.

A model folder holds ``config.json`` (the old API's per-model settings),
``object-detection.pbtxt`` (the label map) and the weights:

* TF2 (``exporter_main_v2``): a SavedModel at the folder root. The loaded
  object is callable as ``detect_fn(uint8 [B, H, W, 3])`` and has a
  ``serving_default`` signature with the single input ``input_tensor``;
  B is fixed at 1 ("batch fixed at 1") or None ("open batch").
* TF1 (``export_inference_graph``): ``frozen_inference_graph.pb``, a GraphDef
  with placeholder ``image_tensor`` (uint8 [None, None, None, 3]) and nodes
  ``detection_boxes``, ``detection_scores``, ``detection_classes``,
  ``num_detections`` (plus the extra outputs the detector has).

The functions here write into the folder they are given; `generate.py` makes
the writes atomic.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import tensorflow as tf
from tensorflow.python.framework.convert_to_constants import (
    convert_variables_to_constants_v2,
)

from engines.config import EngineName
from engines.export_folder import CONFIG_FILE, LABEL_MAP_FILE
from engines.modelgen.shapes import SHAPE_CLASSES, ShapesDetector
from engines.modelgen.ssd_bench import COCO_LABELS, INPUT_SIZE, SsdMobileNetV2Bench
from engines.repository import FROZEN_GRAPH_FILE
from engines.resizer import PIPELINE_CONFIG_FILE

# The engines' names and the file names they read, written here from the same constants.
ENGINE_TF2 = EngineName.TF2.value
ENGINE_TF1 = EngineName.TF1.value
#: [height, width] the shapes models declare. Their graph has no resize (it works at
#: any size), but its objects stay detectable down to this size, so larger JPEGs
#: decode at a DCT scale: a 1080p or 4K frame becomes 960x540.
SHAPES_INPUT_SIZE = (480, 640)
TF2_INPUT = "input_tensor"
TF1_INPUT = "image_tensor"
#: The outputs every export has; detectors may add more (raw_detection_boxes, ...).
REQUIRED_OUTPUTS = ("detection_boxes", "detection_scores", "detection_classes", "num_detections")


class Detector(Protocol):
    """What the exporters need: a tf.Module (its variables get saved) with `detect`."""

    def detect(self, images: tf.Tensor) -> dict[str, tf.Tensor]: ...


@dataclass(frozen=True)
class LabelMapItem:
    id: int
    """1-based class id, as in ``detection_classes``."""
    name: str
    display_name: str


def shapes_label_map() -> list[LabelMapItem]:
    return [LabelMapItem(c.id, c.name, c.display_name) for c in SHAPE_CLASSES]


def coco_label_map() -> list[LabelMapItem]:
    """ids 1..90 with COCO's names (the 10 ids unused by COCO keep their paper names)."""
    return [
        LabelMapItem(i, label.replace(" ", "_"), label)
        for i, label in enumerate(COCO_LABELS, start=1)
    ]


def _quoted(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def label_map_text(items: Iterable[LabelMapItem]) -> str:
    """The label map in the OD API's protobuf text format (``StringIntLabelMap``)."""
    blocks = [
        f"item {{\n  id: {item.id}\n  name: {_quoted(item.name)}\n"
        f"  display_name: {_quoted(item.display_name)}\n}}\n"
        for item in items
    ]
    return "\n".join(blocks)


def write_label_map(model_dir: Path, items: Iterable[LabelMapItem]) -> Path:
    path = Path(model_dir) / LABEL_MAP_FILE
    path.write_text(label_map_text(items), encoding="utf-8")
    return path


def write_config(
    model_dir: Path,
    engine: str,
    number_of_classes: int,
    network: str,
    confidence: int = 60,
    predictions: int = 15,
    input_size: tuple[int, int] | None = None,
) -> Path:
    """``config.json`` as the old API reads it; confidence is a percentage (0-100).

    `input_size` ([height, width], our addition) lets JPEGs decode at a DCT scale.
    """
    config = {
        "inference_engine_name": engine,
        "confidence": confidence,
        "predictions": predictions,
        "number_of_classes": number_of_classes,
        "framework": "tensorflow",
        "type": "detection",
        "network": network,
    }
    if input_size is not None:
        config["input_size"] = list(input_size)
    path = Path(model_dir) / CONFIG_FILE
    path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return path


class _ServingModule(tf.Module):
    """Holds the detector (so its variables are saved) and serves `detect`."""

    def __init__(self, detector: Detector) -> None:
        super().__init__(name="detection_module")
        self.detector = detector

    def _serve(self, input_tensor: tf.Tensor) -> dict[str, tf.Tensor]:
        return self.detector.detect(input_tensor)


def serving_module(detector: Detector, batch_size: int | None) -> tf.Module:
    """A module whose ``__call__`` is a `tf.function` taking ``input_tensor``
    (uint8 ``[batch_size, None, None, 3]``), as in ``exporter_main_v2``.

    ``__call__`` must be defined on the class (not the instance) for the
    module, and the object `tf.saved_model.load` restores, to be callable; the
    input signature differs per export, hence the class made on the fly.
    """
    spec = tf.TensorSpec([batch_size, None, None, 3], tf.uint8, name=TF2_INPUT)
    call = tf.function(_ServingModule._serve, input_signature=[spec])
    module_class = type("DetectionInferenceModule", (_ServingModule,), {"__call__": call})
    return module_class(detector)


def save_tf2(model_dir: Path, detector: Detector, batch_size: int | None) -> Path:
    """Write a SavedModel (``saved_model.pb`` + ``variables/``) into `model_dir`."""
    module = serving_module(detector, batch_size)
    signature = module.__call__.get_concrete_function()
    tf.saved_model.save(module, str(model_dir), signatures={"serving_default": signature})
    return Path(model_dir)


def frozen_graph_def(detector: Detector, batch_size: int | None = None) -> tf.compat.v1.GraphDef:
    """The detector as a TF1 frozen GraphDef: variables folded into constants,
    input placeholder ``image_tensor``, one Identity node per output named
    after its key (``detection_boxes``, ...), as TF1 exports name them."""

    def named_outputs(image_tensor: tf.Tensor) -> dict[str, tf.Tensor]:
        outputs = detector.detect(image_tensor)
        return {key: tf.identity(value, name=key) for key, value in outputs.items()}

    spec = tf.TensorSpec([batch_size, None, None, 3], tf.uint8, name=TF1_INPUT)
    concrete = tf.function(named_outputs, input_signature=[spec]).get_concrete_function()
    frozen = convert_variables_to_constants_v2(concrete)
    graph_def = frozen.graph.as_graph_def()
    _check_node_names(graph_def, [TF1_INPUT, *concrete.structured_outputs])
    return graph_def


def _check_node_names(graph_def: tf.compat.v1.GraphDef, names: Iterable[str]) -> None:
    present = {node.name for node in graph_def.node}
    missing = [name for name in names if name not in present]
    if missing:
        raise RuntimeError(f"frozen graph lacks the nodes {missing}")


def save_frozen_graph(model_dir: Path, detector: Detector, batch_size: int | None = None) -> Path:
    path = Path(model_dir) / FROZEN_GRAPH_FILE
    path.write_bytes(frozen_graph_def(detector, batch_size).SerializeToString())
    return path


def pipeline_config_text(num_classes: int, height: int, width: int) -> str:
    """The part of an OD API ``pipeline.config`` that says how images are resized,
    as the Model Zoo ships beside every export (the rest is training settings)."""
    return (
        "model {\n  ssd {\n"
        f"    num_classes: {num_classes}\n"
        "    image_resizer {\n      fixed_shape_resizer {\n"
        f"        height: {height}\n        width: {width}\n"
        "      }\n    }\n  }\n}\n"
    )


def _export(
    model_dir: Path,
    write_weights: Callable[[Path], object],
    engine: str,
    labels: list[LabelMapItem],
    network: str,
    input_size: tuple[int, int] | None = None,
    pipeline_config: str | None = None,
) -> Path:
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    write_weights(model_dir)
    write_label_map(model_dir, labels)
    write_config(model_dir, engine, len(labels), network, input_size=input_size)
    if pipeline_config is not None:
        (model_dir / PIPELINE_CONFIG_FILE).write_text(pipeline_config, encoding="utf-8")
    return model_dir


def export_shapes_tf2(model_dir: Path, open_batch: bool = False) -> Path:
    """The shapes detector as a TF2 SavedModel; batch fixed at 1 unless `open_batch`."""
    return _export(
        model_dir,
        lambda d: save_tf2(d, ShapesDetector(), None if open_batch else 1),
        ENGINE_TF2,
        shapes_label_map(),
        "shapes",
        input_size=SHAPES_INPUT_SIZE,
    )


def export_shapes_blind(model_dir: Path, blind_to: str) -> Path:
    """shapes_tf2 with different weights: its colour kernel cannot see the class
    `blind_to` (a display name), so that class's objects are never found. A
    candidate model with a known, countable difference, for rollout tests."""
    detector = ShapesDetector()
    names = [c.display_name for c in SHAPE_CLASSES]
    if blind_to not in names:
        raise ValueError(f"{blind_to!r} is not one of the shapes classes {names}")
    kernel = detector.chroma_kernel.numpy()
    index = names.index(blind_to)
    kernel[..., 2 * index : 2 * index + 2] = 0.0  # no chroma: below every threshold
    detector.chroma_kernel.assign(kernel)
    return _export(
        model_dir,
        lambda d: save_tf2(d, detector, 1),
        ENGINE_TF2,
        shapes_label_map(),
        "shapes",
        input_size=SHAPES_INPUT_SIZE,
    )


def export_shapes_tf1(model_dir: Path) -> Path:
    """The shapes detector as a TF1 frozen graph (open batch)."""
    return _export(
        model_dir,
        lambda d: save_frozen_graph(d, ShapesDetector()),
        ENGINE_TF1,
        shapes_label_map(),
        "shapes",
        input_size=SHAPES_INPUT_SIZE,
    )


def export_ssd_mobilenet_v2_bench(
    model_dir: Path, seed: int = 0, batch_size: int | None = None
) -> Path:
    """The random-weight SSD-MobileNetV2 as a TF2 SavedModel: an open batch, or
    `batch_size` fixed, as most Object Detection API exports (1) have."""
    return _export(
        model_dir,
        lambda d: save_tf2(d, SsdMobileNetV2Bench(seed), batch_size),
        ENGINE_TF2,
        coco_label_map(),
        "ssd_mobilenet_v2",
        pipeline_config=pipeline_config_text(len(COCO_LABELS), INPUT_SIZE, INPUT_SIZE),
    )
