"""Generated models and images for the tests.

The demo models are generated once into the project's `models/` folder (as
`make test` does before pytest), then copied into a per-session repository so
that tests never depend on, or change, what a user keeps in `models/`. Model
Garden's random-weight exports are test fixtures only: they are generated into
the tests' own cache (`TEST_MODELS`), never into `models/`, which `make run` serves.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
GENERATED = ("shapes_tf2", "shapes_tf1", "ssd_mobilenet_v2_bench")
#: Made by Model Garden's own exporter (engines/modelgen/model_garden.py).
MODEL_GARDEN = ("retinanet_mg_pixels", "retinanet_mg_normalized")


TEST_MODELS = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / (
    "tfstream/test-models"
)


def build_repository(dest: Path, names: tuple[str, ...] = GENERATED) -> Path:
    from engines.modelgen.generate import generate_models

    dest.mkdir(parents=True, exist_ok=True)
    for name in names:
        source = TEST_MODELS if name in MODEL_GARDEN else REPO_ROOT / "models"
        generate_models(source, [name])
        shutil.copytree(source / name, dest / name, dirs_exist_ok=True)
    return dest


def build_images(dest: Path, count: int = 60, seed: int = 7) -> dict[str, list[dict[str, Any]]]:
    from engines.modelgen.images import write_test_images

    write_test_images(dest, count=count, seed=seed)
    return json.loads((dest / "ground_truth.json").read_text())


def iou(a: list[float], b: list[float]) -> float:
    from engines.modelgen.images import box_iou

    return box_iou(a, b)


def match_truth(
    boxes: list[dict[str, Any]], truth: list[dict[str, Any]], min_iou: float = 0.9
) -> list[str]:
    """Problems between detected boxes (wire format) and ground truth; [] when they match.

    Every true object needs a box of its label with IoU >= `min_iou`, and no box
    may be left over (a false positive).
    """
    problems: list[str] = []
    left = list(boxes)
    for obj in truth:
        best, best_iou = None, 0.0
        for box in left:
            c = box["coordinates"]
            score = iou([c["left"], c["top"], c["right"], c["bottom"]], obj["box"])
            if box["ObjectClassName"] == obj["label"] and score > best_iou:
                best, best_iou = box, score
        if best is None or best_iou < min_iou:
            problems.append(f"{obj['label']} at {obj['box']}: best IoU {best_iou:.3f}")
        else:
            left.remove(best)
    problems.extend(f"false positive {b['ObjectClassName']} {b['coordinates']}" for b in left)
    return problems


#: Images of several sizes and aspect ratios, none the Model Garden models' 128x128
#: input: (width, height), landscape, portrait, square, very wide.
MODEL_GARDEN_SIZES = ((640, 480), (300, 500), (200, 200), (900, 240))


def shapes_png(width: int, height: int, seed: int = 3) -> bytes:
    """A generated shapes image as PNG: lossless, so the server and the test see the same pixels."""
    import io

    import numpy as np

    from engines.modelgen.images import draw_shapes_image

    picture, _ = draw_shapes_image(np.random.default_rng(seed), width, height)
    out = io.BytesIO()
    picture.save(out, format="PNG")
    return out.getvalue()


@functools.cache
def _signature(saved_model: Path) -> Any:
    import tensorflow as tf

    return tf.saved_model.load(str(saved_model)).signatures["serving_default"]


def model_garden_reference(model_dir: Path, png: bytes) -> list[tuple[int, list[float]]]:
    """What a Model Garden export's raw outputs mean, in original-image pixels:
    (class id, [left, top, right, bottom]) per detection, computed here from the
    signature's outputs as Model Garden documents them, independently of engines/.

    Boxes are [ymin, xmin, ymax, xmax], in pixels of the resized input unless
    params.yaml says `output_normalized_coordinates: true`; image_info is
    [[orig_h, orig_w], [input_h, input_w], [y_scale, x_scale], [y_offset, x_offset]].
    Coordinates past the image (the input's padding) are cut at its edge.
    """
    import io

    import numpy as np
    import tensorflow as tf
    from PIL import Image

    image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.uint8)
    height, width = image.shape[:2]
    serve = _signature(model_dir / "saved_model")
    out = {k: v.numpy()[0] for k, v in serve(inputs=tf.constant(image[np.newaxis])).items()}
    normalized = "output_normalized_coordinates: true" in (model_dir / "params.yaml").read_text()
    count = int(out["num_detections"])
    found = []
    for (y1, x1, y2, x2), class_id in zip(
        out["detection_boxes"][:count], out["detection_classes"][:count], strict=True
    ):
        if normalized:
            ys, xs = [y1 * height, y2 * height], [x1 * width, x2 * width]
        else:
            (y_scale, x_scale), (y_off, x_off) = out["image_info"][2], out["image_info"][3]
            ys = [(y1 + y_off) / y_scale, (y2 + y_off) / y_scale]
            xs = [(x1 + x_off) / x_scale, (x2 + x_off) / x_scale]
        left, right = (min(max(float(x), 0.0), width) for x in xs)
        top, bottom = (min(max(float(y), 0.0), height) for y in ys)
        found.append((int(class_id), [left, top, right, bottom]))
    return found


def boxes_match(
    served: list[dict[str, Any]], reference: list[tuple[int, list[float]]], tolerance: float = 1.0
) -> list[str]:
    """Problems pairing served boxes with reference boxes one to one (class id equal,
    every coordinate within `tolerance` pixels); [] when they all pair up."""
    problems: list[str] = []
    left = list(served)
    for class_id, expected in reference:
        match = next(
            (
                box
                for box in left
                if box["ObjectClassId"] == class_id
                and all(
                    abs(box["coordinates"][k] - v) <= tolerance
                    for k, v in zip(("left", "top", "right", "bottom"), expected, strict=True)
                )
            ),
            None,
        )
        if match is None:
            problems.append(f"no served box for class {class_id} at {expected}")
        else:
            left.remove(match)
    problems.extend(f"served box not in the outputs: {box}" for box in left)
    return problems


def link_model(source: Path, dest: Path, **config: object) -> Path:
    """A model folder whose weights are linked to `source`'s (Model Garden layout:
    saved_model/ beside params.yaml), with `config` changed in its config.json."""
    dest.mkdir(parents=True)
    (dest / "saved_model").symlink_to(source / "saved_model", target_is_directory=True)
    shutil.copy(source / "object-detection.pbtxt", dest)
    shutil.copy(source / "params.yaml", dest)
    original = json.loads((source / "config.json").read_text())
    (dest / "config.json").write_text(json.dumps({**original, **config}))
    return dest


def declared_normalized(source: Path, dest: Path) -> Path:
    """A Model Garden pixel-box export whose config.json declares normalised boxes."""
    return link_model(source, dest, box_format="normalized")


def run_validate(repository: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`tfstream-models validate` on `repository`, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "engines", "validate", str(repository), *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=300,
    )


def candidate_repository(dest: Path, blind_to: str = "yellow disc") -> Path:
    """A repository whose shapes_tf2 is the candidate that cannot see `blind_to`."""
    from engines.modelgen.export import export_shapes_blind

    export_shapes_blind(dest / "shapes_tf2", blind_to)
    return dest


def serving_copy(model_repository: Path, dest: Path, name: str = "shapes_tf2") -> Path:
    """A repository holding only `name`, copied from the session's repository."""
    shutil.copytree(model_repository / name, dest / name)
    return dest
