"""Real-exporter check for KerasHub: a RetinaNetObjectDetector exported with
`keras.export.ExportArchive` around its preprocessor and `predict_step`, as
docs/model-formats.md says, served by tfstream from the export folder alone
(not run by `make test`: keras-hub is not a project dependency).

    python3.11 -m venv /work/kh-venv && /work/kh-venv/bin/pip install keras-hub \
        "tensorflow-cpu==2.21.*" pyyaml pillow
    .venv/bin/python -m bench.keras_hub_check --keras-hub-python /work/kh-venv/bin/python

`export` (in KerasHub's venv) builds a small random-weight RetinaNet (ResNet
encoder, 256x256 input) whose box head is zeroed, so that its decoded boxes
are its anchors (random box regression gives boxes millions of pixels wide),
exports it, and writes `model.predict(image)` for PNG images of several
aspect ratios to reference.json, in model-input pixels as KerasHub returns
them, with the centre crop Keras' resize took (`crop_to_aspect_ratio`).
`compare` (in the project's venv) checks the export's signature is what
engines/keras_hub.py reads, and that tfstream's boxes are KerasHub's boxes
mapped through that crop and clipped to the image (same classes, within 1 px).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

SIZES = ((640, 480), (1280, 720), (480, 640), (333, 777))
INPUT = (256, 256)
NAMES = {0: "circle", 1: "square", 2: "triangle"}


def export(workdir: Path) -> None:
    import keras
    import keras_hub
    import numpy as np
    import tensorflow as tf
    import yaml
    from PIL import Image

    keras.utils.set_random_seed(0)
    encoder = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64],
        input_conv_kernel_sizes=[7],
        stackwise_num_filters=[64, 64, 64, 64],
        stackwise_num_blocks=[1, 1, 1, 1],
        stackwise_num_strides=[1, 2, 2, 2],
        block_type="basic_block",
    )
    backbone = keras_hub.models.RetinaNetBackbone(
        image_encoder=encoder, min_level=3, max_level=5, use_p5=False
    )
    converter = keras_hub.layers.RetinaNetImageConverter(image_size=INPUT, scale=1 / 255.0)
    preprocessor = keras_hub.models.RetinaNetObjectDetectorPreprocessor(image_converter=converter)
    model = keras_hub.models.RetinaNetObjectDetector(
        backbone=backbone,
        num_classes=len(NAMES),
        bounding_box_format="yxyx",
        preprocessor=preprocessor,
        classification_head_prior_probability=0.4,
    )
    for weight in model.box_head.weights:
        weight.assign(np.zeros(weight.shape, weight.dtype))
    target = workdir / "export"
    shutil.rmtree(target, ignore_errors=True)
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "serve",
        lambda images: model.predict_step(model.preprocessor(images)),
        input_signature=[tf.TensorSpec([1, None, None, 3], tf.uint8)],
    )
    archive.write_out(str(target))
    meta = {"names": NAMES, "imgsz": list(INPUT), "bounding_box_format": "yxyx"}
    (target / "metadata.yaml").write_text(yaml.safe_dump(meta))
    rng = np.random.default_rng(0)
    reference: dict[str, Any] = {"images": {}}
    for width, height in SIZES:
        pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        name = f"image_{width}x{height}.png"
        Image.fromarray(pixels).save(workdir / name)
        out = model.predict(pixels[np.newaxis], verbose=0)
        count = int(out["num_detections"][0])
        # Keras' crop_to_aspect_ratio (keras/src/backend/tensorflow/image.py).
        crop_h = max(min(height, int(np.float32(width * INPUT[0]) / np.float32(INPUT[1]))), 1)
        crop_w = max(min(width, int(np.float32(height * INPUT[1]) / np.float32(INPUT[0]))), 1)
        top = int(np.float32(height - crop_h) / np.float32(2))
        left = int(np.float32(width - crop_w) / np.float32(2))
        reference["images"][name] = {
            "crop": [top, left, crop_h, crop_w],
            "boxes": out["boxes"][0, :count].tolist(),
            "labels": out["labels"][0, :count].tolist(),
            "confidence": out["confidence"][0, :count].tolist(),
        }
    (workdir / "reference.json").write_text(json.dumps(reference, indent=1))
    print(f"exported {target}")


def compare(workdir: Path) -> int:
    import numpy as np

    from engines.boxes import to_pixels
    from engines.detector import load_detector
    from engines.images import decode_image
    from engines.repository import ModelRepository

    reference = json.loads((workdir / "reference.json").read_text())
    repo_dir = workdir / "repository"
    shutil.rmtree(repo_dir, ignore_errors=True)
    repo_dir.mkdir()
    shutil.copytree(workdir / "export", repo_dir / "retinanet")  # the folder, nothing added
    detector = load_detector(ModelRepository(repo_dir).spec("retinanet"), device="cpu")
    print(f"retinanet: {detector.engine.convention.describe()}, labels {detector.spec.labels}")
    failures = 0
    for name, ref in reference["images"].items():
        pixels = decode_image((workdir / name).read_bytes())
        height, width = pixels.shape[:2]
        (raw,) = detector.engine.infer([pixels])
        det = to_pixels(raw, width, height, detector.spec.labels, detector.engine.convention)
        top, left, crop_h, crop_w = ref["crop"]
        sy, sx = crop_h / INPUT[0], crop_w / INPUT[1]
        expected = [
            [
                min(max(x1 * sx + left, 0), width),
                min(max(y1 * sy + top, 0), height),
                min(max(x2 * sx + left, 0), width),
                min(max(y2 * sy + top, 0), height),
            ]
            for y1, x1, y2, x2 in ref["boxes"]
        ]
        same_classes = det.classes.tolist() == ref["labels"]
        if len(det.boxes) != len(expected):
            diff = float("inf")
        else:
            diff = float(np.abs(det.boxes - np.array(expected)).max()) if expected else 0.0
        ok = same_classes and diff <= 1.0
        failures += not ok
        print(
            f"  {name}: {len(expected)} KerasHub boxes, {len(det.boxes)} tfstream, same classes "
            f"{same_classes}, max difference {diff:.3f} px {'ok' if ok else 'FAIL'}"
        )
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", nargs="?", default="all", choices=("all", "export", "compare"))
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/keras-hub-check"))
    parser.add_argument("--keras-hub-python", default="/work/kh-venv/bin/python")
    args = parser.parse_args(argv)
    args.workdir = args.workdir.resolve()
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.step == "export":
        export(args.workdir)
        return 0
    if args.step == "all":
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        cmd = [args.keras_hub_python, str(Path(__file__).resolve()), "export"]
        subprocess.run([*cmd, "--workdir", str(args.workdir)], check=True, env=env)
    return compare(args.workdir)


if __name__ == "__main__":
    sys.exit(main())
