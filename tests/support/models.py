"""Generated models and images for the tests.

The models are generated once into the project's `models/` folder (as
`make test` does before pytest), then copied into a per-session repository so
that tests never depend on, or change, what a user keeps in `models/`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
GENERATED = ("shapes_tf2", "shapes_tf1", "ssd_mobilenet_v2_bench")


def build_repository(dest: Path, names: tuple[str, ...] = GENERATED) -> Path:
    from engines.modelgen.generate import generate_models

    source = REPO_ROOT / "models"
    generate_models(source, list(names))
    dest.mkdir(parents=True, exist_ok=True)
    for name in names:
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
