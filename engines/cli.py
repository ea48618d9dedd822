"""`tfstream-models`: generate the demo and benchmark models, draw test images,
and check that every model of a repository loads."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path

from pydantic_settings import BaseSettings, CliPositionalArg

from engines.errors import TfstreamError
from engines.settings import cli_config, parse_cli


class Command(StrEnum):
    GENERATE = "generate"
    """Write the generated models into DIR (skips those already there)."""
    IMAGES = "images"
    """Draw test images with ground-truth boxes (ground_truth.json) into DIR."""
    LIST = "list"
    """List the models of the repository DIR: the version each would serve, the
    fingerprint of its weights, and every version folder there."""
    VALIDATE = "validate"
    """Load every model of the repository DIR, run it once on a generated image, print the
    output convention it was read with, and report problems (exit 1 if any)."""


class ModelsSettings(BaseSettings):
    """Generate the demo and benchmark models (generate DIR), draw test images with
    ground truth (images DIR), list a repository's models with their versions and
    weight fingerprints (list DIR), or load and check every model of a repository
    (validate DIR: each model also runs once on a generated 480x640 image, and a model
    whose outputs break its convention fails). Every option is also an environment
    variable TFSTREAM_<OPTION>."""

    model_config = cli_config("tfstream-models")

    command: CliPositionalArg[Command]
    """generate, images, list or validate."""
    dir: CliPositionalArg[Path]
    """The model repository (generate, list, validate) or the image folder (images)."""
    models: str = "all"
    """generate: comma-separated model names, or 'all': the demo models (shapes_tf2,
    shapes_tf1, ssd_mobilenet_v2_bench; the fixed-batch bench model
    ssd_mobilenet_v2_bench_b1, Model Garden's random-weight test exports
    retinanet_mg_* and the Ultralytics / KerasHub layouts yolo11_shapes_raw,
    yolo11_shapes_nms, yolo26_shapes_end2end, yolo11_shapes_raw_normalized,
    yolo11_shapes_nms_normalized, yolo11_shapes_raw_b4, keras_hub_shapes,
    keras_hub_shapes_pad, keras_hub_shapes_stretch and keras_hub_shapes_xyxy only when
    named).
    list/validate: names, or 'all': every model of DIR."""
    overwrite: bool = False
    """generate: replace models that already exist."""
    count: int = 60
    """images: how many images to draw."""
    seed: int = 0
    """images: random seed; the same seed draws the same images."""
    device: str = "auto"
    """validate: TensorFlow device to load models on ('auto', 'cpu', 'GPU:0')."""


def _selected(models: str) -> list[str] | None:
    names = [n.strip() for n in models.split(",") if n.strip()]
    return None if not names or names == ["all"] else names


#: The validation image: not square and not any model's input size, so that a model
#: read with the wrong box convention shows it.
VALIDATION_SIZE = (480, 640)


def validate(repository: Path, names: list[str] | None, device: str) -> int:
    """Load each model as the consumer would, run it once with the output checks
    of every request; print one line per model."""
    import numpy as np

    from engines import runtime
    from engines.detector import load_detector
    from engines.modelgen.images import draw_shapes_image
    from engines.repository import ModelRepository

    picture, _ = draw_shapes_image(np.random.default_rng(0), *VALIDATION_SIZE[::-1])
    image = np.asarray(picture.convert("RGB"), dtype=np.uint8)

    repo = ModelRepository(repository)
    names = names or repo.names()
    if not names:
        print(f"no models in {repository}")
        return 1
    placed = runtime.configure(None if device == "auto" else device)
    problems = 0
    for name in names:
        try:
            detector = load_detector(repo.spec(name), placed)
            (boxes,) = detector.detect([image], [detector.options(confidence=0)])
        except TfstreamError as exc:
            problems += 1
            print(f"FAIL {name}: [{exc.code}] {exc.message}")
            continue
        spec = detector.spec
        batch = detector.engine.fixed_batch or "any"
        print(
            f"ok   {name}: {spec.engine.value}, outputs {detector.engine.convention.describe()}, "
            f"{len(spec.labels)} labels, batch {batch}, {detector.device}, "
            f"loaded in {detector.load_s:.1f}s, {len(boxes)} boxes on a test image, "
            f"hash {spec.hash}"
        )
    return 1 if problems else 0


def list_models(repository: Path, names: list[str] | None) -> int:
    """One line per model: the version it would serve and its fingerprint, without
    loading anything (a broken model says why and makes the exit code 1)."""
    from engines.repository import ModelRepository, weights_fingerprint

    repo = ModelRepository(repository)
    names = names or repo.names()
    problems = 0
    for name in names:
        try:
            spec = repo.spec(name)
            folders = repo.versions(name)
        except TfstreamError as exc:
            problems += 1
            print(f"FAIL {name}: [{exc.code}] {exc.message}")
            continue
        layout = f"versions {folders}" if folders else "flat"
        print(
            f"{name}: version {spec.version}, fingerprint {weights_fingerprint(spec.weights)}, "
            f"{layout}, {spec.engine.value}, hash {spec.hash}"
        )
    return 1 if problems else 0


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    settings = parse_cli(ModelsSettings, argv)
    if settings.command is Command.GENERATE:
        from engines.modelgen.generate import generate_models

        written = generate_models(settings.dir, _selected(settings.models), settings.overwrite)
        for path in written:
            print(f"generated {path}")
        print(f"models generated in {settings.dir}")
        return 0
    if settings.command is Command.IMAGES:
        from engines.modelgen.images import write_test_images

        write_test_images(settings.dir, count=settings.count, seed=settings.seed)
        truth = json.loads((settings.dir / "ground_truth.json").read_text())
        print(f"wrote {len(truth)} images and ground_truth.json to {settings.dir}")
        return 0
    if settings.command is Command.LIST:
        return list_models(settings.dir, _selected(settings.models))
    return validate(settings.dir, _selected(settings.models), settings.device)


if __name__ == "__main__":
    sys.exit(main())
