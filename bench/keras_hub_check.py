"""Real-exporter check for KerasHub: RetinaNetObjectDetectors whose image converter
crops, pads or stretches to its input, exported with `keras.export.ExportArchive`
around the preprocessor and `predict_step` with the metadata.yaml the recipe of
docs/model-formats.md writes, served by tfstream from the export folder alone
(not run by `make test`: keras-hub is not a project dependency).

    python3.11 -m venv /work/kh-venv && /work/kh-venv/bin/pip install keras-hub \
        "tensorflow-cpu==2.21.*" pyyaml pillow
    .venv/bin/python -m bench.keras_hub_check --keras-hub-python /work/kh-venv/bin/python

`export` (in KerasHub's venv) builds, per geometry, a small random-weight
RetinaNet (ResNet encoder, 256x256 input) whose box head is zeroed, so that
its decoded boxes are its anchors (random box regression gives boxes millions
of pixels wide), exports it, writes metadata.yaml from the model's own
converter and detector, and writes `model.predict(image)` for PNG images of
several aspect ratios to reference.json, in model-input pixels as KerasHub
returns them. `compare` (in the project's venv) checks each export loads with
the geometry its converter has, and that tfstream's boxes are KerasHub's
mapped back through that geometry, computed here as Keras' resize computes it
(float32, truncated; pad: `start` rows on both sides), and clipped to the
image: same classes, every coordinate within 1 px.
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
GEOMETRIES = ("crop", "pad", "stretch")


def keras_geometry(geometry: str, height: int, width: int) -> tuple[float, float, float, float]:
    """(top, left, region height, region width) of the image region Keras resized to
    INPUT, in image pixels: the crop (inside the image), the padded canvas (top and
    left negative), or the whole image."""
    import numpy as np

    f32 = np.float32
    in_h, in_w = INPUT
    if geometry == "crop":
        crop_h = max(min(height, int(f32(width * in_h) / f32(in_w))), 1)
        crop_w = max(min(width, int(f32(height * in_w) / f32(in_h))), 1)
        top = int(f32(height - crop_h) / f32(2))
        left = int(f32(width - crop_w) / f32(2))
        return top, left, crop_h, crop_w
    if geometry == "pad":
        pad_h = max(height, int(f32(width * in_h) / f32(in_w)))
        pad_w = max(width, int(f32(height * in_w) / f32(in_h)))
        top = int(f32(pad_h - height) / f32(2))
        left = int(f32(pad_w - width) / f32(2))
        return -top, -left, height + 2 * top, width + 2 * left
    return 0, 0, height, width


def _serving(model: Any) -> Any:
    """The endpoint of the recipe, bound to `model` (a closure: ExportArchive traces
    every argument of the function, a default one included)."""
    return lambda images: model.predict_step(model.preprocessor(images))


def export(workdir: Path) -> None:
    import keras
    import keras_hub
    import numpy as np
    import tensorflow as tf
    import yaml
    from PIL import Image

    rng = np.random.default_rng(0)
    images = {}
    for width, height in SIZES:
        name = f"image_{width}x{height}.png"
        images[name] = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        Image.fromarray(images[name]).save(workdir / name)
    reference: dict[str, Any] = {"keras_hub": keras_hub.__version__, "exports": {}}
    for geometry in GEOMETRIES:
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
        converter = keras_hub.layers.RetinaNetImageConverter(
            image_size=INPUT,
            scale=1 / 255.0,
            crop_to_aspect_ratio=geometry == "crop",
            pad_to_aspect_ratio=geometry == "pad",
        )
        preprocessor = keras_hub.models.RetinaNetObjectDetectorPreprocessor(
            image_converter=converter
        )
        model = keras_hub.models.RetinaNetObjectDetector(
            backbone=backbone,
            num_classes=len(NAMES),
            bounding_box_format="yxyx",
            preprocessor=preprocessor,
            classification_head_prior_probability=0.4,
        )
        for weight in model.box_head.weights:
            weight.assign(np.zeros(weight.shape, weight.dtype))
        target = workdir / f"export_{geometry}"
        shutil.rmtree(target, ignore_errors=True)
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint(
            "serve",
            _serving(model),
            input_signature=[tf.TensorSpec([1, None, None, 3], tf.uint8)],
        )
        archive.write_out(str(target))
        # The recipe of docs/model-formats.md: what the export does not record.
        used = model.preprocessor.image_converter
        meta = {
            "names": NAMES,
            "image_size": list(used.image_size),
            "crop_to_aspect_ratio": bool(used.crop_to_aspect_ratio),
            "pad_to_aspect_ratio": bool(used.pad_to_aspect_ratio),
            "bounding_box_format": model.bounding_box_format,
        }
        (target / "metadata.yaml").write_text(yaml.safe_dump(meta))
        answers = {}
        for name, pixels in images.items():
            out = model.predict(pixels[np.newaxis], verbose=0)
            count = int(out["num_detections"][0])
            answers[name] = {
                "boxes": out["boxes"][0, :count].tolist(),
                "labels": out["labels"][0, :count].tolist(),
            }
        reference["exports"][geometry] = answers
        print(f"exported {target}")
    (workdir / "reference.json").write_text(json.dumps(reference, indent=1))


def compare(workdir: Path) -> int:
    import numpy as np

    from engines.boxes import to_pixels
    from engines.detector import load_detector
    from engines.images import decode_image
    from engines.repository import ModelRepository

    reference = json.loads((workdir / "reference.json").read_text())
    print(f"KerasHub {reference['keras_hub']}")
    repo_dir = workdir / "repository"
    shutil.rmtree(repo_dir, ignore_errors=True)
    repo_dir.mkdir()
    failures = 0
    for geometry, answers in reference["exports"].items():
        name = f"retinanet_{geometry}"
        shutil.copytree(workdir / f"export_{geometry}", repo_dir / name)  # nothing added
        detector = load_detector(ModelRepository(repo_dir).spec(name), device="cpu")
        convention = detector.engine.convention
        print(f"{name}: {convention.describe()}, geometry {convention.variant}")
        failures += convention.variant != geometry
        for image, ref in answers.items():
            pixels = decode_image((workdir / image).read_bytes())
            height, width = pixels.shape[:2]
            (raw,) = detector.engine.infer([pixels])
            det = to_pixels(raw, width, height, detector.spec.labels, convention)
            top, left, region_h, region_w = keras_geometry(geometry, height, width)
            sy, sx = region_h / INPUT[0], region_w / INPUT[1]
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
                f"  {image}: {len(expected)} KerasHub boxes, {len(det.boxes)} tfstream, same "
                f"classes {same_classes}, max difference {diff:.3f} px {'ok' if ok else 'FAIL'}"
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
