"""Real Model Garden detection exports, written by Model Garden's own exporter.

Model Garden (`tf-models-nightly`, package `official`) exports detectors with
`official.vision.serving.export_saved_model_lib.export_inference_graph`, the
function behind its `export_saved_model.py` command. Its output convention is
not the Object Detection API's: input `inputs`, int32 classes, boxes in pixels
of the resized model input plus an `image_info` output, unless exported with
`output_normalized_coordinates`. To serve those exports right we test on
them, not on imitations of their signature, so this module runs the exporter
itself on a deliberately tiny RetinaNet (ResNet-10 + FPN, 128x128 input,
random seeded weights: the tests compare served boxes with what the raw
outputs mean, not with ground truth).

The export directory is laid out as the exporter writes it: `saved_model/`
and `params.yaml` (which records the box unit), plus the model folder's
`config.json` and label map. Model Garden is a development dependency
(deploy/model-garden-requirements.txt); `available()` says whether it is
installed.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from engines.modelgen.export import ENGINE_TF2, shapes_label_map, write_config, write_label_map

#: The model's input size; Model Garden resizes every image to fit it, keeping its aspect.
INPUT_SIZE = (128, 128)
#: Detections per image in the outputs.
MAX_DETECTIONS = 10
#: Weights are random: seeded, so that every generation writes the same model.
SEED = 0


def available() -> bool:
    """Model Garden and its Keras 2 (`tf_keras`) are importable."""
    return all(importlib.util.find_spec(name) is not None for name in ("official", "tf_keras"))


def retinanet_params(normalized: bool, num_classes: int):  # type: ignore[no-untyped-def]
    """The `retinanet_resnetfpn_coco` experiment, shrunk to a model that exports in a minute.

    Every detection is kept (score threshold 0): random weights score about 0.01
    everywhere, and the tests need boxes to compare.
    """
    from official.core import exp_factory

    params = exp_factory.get_exp_config("retinanet_resnetfpn_coco")
    model = params.task.model
    model.num_classes = num_classes
    model.input_size = [*INPUT_SIZE, 3]
    model.min_level, model.max_level = 3, 5
    model.backbone.resnet.model_id = 10
    model.decoder.fpn.num_filters = 16
    model.head.num_convs = 1
    model.head.num_filters = 16
    model.anchor.num_scales = 1
    model.anchor.aspect_ratios = [1.0]
    model.detection_generator.pre_nms_score_threshold = 0.0
    model.detection_generator.max_num_detections = MAX_DETECTIONS
    params.task.init_checkpoint = None
    params.task.export_config.output_normalized_coordinates = normalized
    return params


def export_retinanet(model_dir: Path, normalized: bool) -> Path:
    """Export the tiny RetinaNet with the exporter's defaults (`input_type=image_tensor`,
    open batch), in pixel boxes or, with `normalized`, normalised ones.

    Raises:
        RuntimeError: Model Garden is not installed.
    """
    if not available():
        raise RuntimeError(
            "Model Garden is not installed: pip install --no-deps -r "
            "deploy/model-garden-requirements.txt (make setup does)"
        )
    import tf_keras
    from official.vision.serving import export_saved_model_lib

    labels = shapes_label_map()
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    tf_keras.utils.set_random_seed(SEED)
    export_saved_model_lib.export_inference_graph(
        input_type="image_tensor",
        batch_size=None,
        input_image_size=list(INPUT_SIZE),
        params=retinanet_params(normalized, num_classes=len(labels) + 1),  # + background
        checkpoint_path=None,
        export_dir=str(model_dir),
        export_saved_model_subdir="saved_model",
    )
    write_label_map(model_dir, labels)
    network = f"retinanet_resnet10_fpn ({'normalized' if normalized else 'pixel'} boxes)"
    write_config(model_dir, ENGINE_TF2, len(labels), network, confidence=0, predictions=15)
    return model_dir
