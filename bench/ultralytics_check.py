"""Real-exporter check: tfstream's boxes against Ultralytics' own predict, on
SavedModels exported by Ultralytics itself (not run by `make test`: it needs
ultralytics, torch and onnx2tf, which the project does not install).

Two virtualenvs, kept apart: Ultralytics' (torch, onnx2tf, its own
TensorFlow) exports and predicts; the project's runs tfstream on the same
export folders and PNG images (lossless, so both sides see the same pixels).

    python3.11 -m venv /work/yolo-venv && /work/yolo-venv/bin/pip install ultralytics \
        onnx onnxslim onnxruntime "onnx2tf>=1.28,<1.29" "tensorflow>=2.19,<2.20" tf_keras \
        sng4onnx onnx_graphsurgeon
    .venv/bin/python -m bench.ultralytics_check --ultralytics-python /work/yolo-venv/bin/python \
        --workdir /tmp/yolo-check

Steps: `export` (in Ultralytics' venv) builds random-weight models from
`yolo11n.yaml` (and `yolo26n.yaml`), recalibrates their BatchNorm statistics
on the test images and sets the class biases so that scores spread (random
weights otherwise give near-zero scores and identical boxes), exports them
with `format="saved_model"` (raw; `nms=True`; YOLO26 end2end), and writes
Ultralytics' `YOLO(export_dir)(png, conf=..., iou=0.7)` boxes to
reference.json. `compare` (in the project's venv) serves each export folder,
dropped as it is into a model repository, and pairs its boxes with the
reference (same class, every coordinate within 1 px); then it times the
YOLO11n export against ssd_mobilenet_v2_bench at batch 1, interleaved.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

#: (width, height) of the test images: landscape, HD, portrait, square, tall and odd.
SIZES = ((640, 480), (1280, 720), (480, 640), (500, 500), (333, 777))
CALIBRATION_FILE = "calibration_image_sample_data_20x128x128x3_float32.npy"
#: (name, model yaml, export arguments)
VARIANTS = (
    ("yolo11n_raw", "yolo11n.yaml", {}),
    ("yolo11n_nms", "yolo11n.yaml", {"nms": True}),
    ("yolo26n_raw", "yolo26n.yaml", {}),  # YOLO26 with nms=None: the raw layout
    ("yolo26n_end2end", "yolo26n.yaml", {"nms": False}),  # its NMS-free head
)
IOU = 0.7
#: Boxes per image the confidence is chosen for (from Ultralytics' own scores).
TARGET_BOXES = 25


def write_images(workdir: Path) -> list[Path]:
    """PNG test images: noisy backgrounds with coloured rectangles and ellipses."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    paths = []
    for width, height in SIZES:
        base = rng.uniform(60, 200, size=3)
        pixels = base + rng.normal(0, 25, size=(height, width, 3))
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for _ in range(12):
            x0, y0 = int(rng.integers(0, width - 20)), int(rng.integers(0, height - 20))
            x1 = min(width, x0 + int(rng.integers(20, width // 2)))
            y1 = min(height, y0 + int(rng.integers(20, height // 2)))
            colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
        path = workdir / f"image_{width}x{height}.png"
        image.save(path)
        paths.append(path)
    return paths


def _recalibrate(model: Any, images: list[Path]) -> None:
    """BatchNorm statistics from the test images (letterboxed, several passes), then
    class biases that give a spread of scores."""
    import cv2
    import numpy as np
    import torch

    net = model.model
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over all passes
    batch = []
    for path in images:
        image = cv2.imread(str(path))[..., ::-1]
        batch.append(cv2.resize(image, (640, 640)).astype(np.float32) / 255.0)
    tensor = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).contiguous()
    net.train()
    with torch.no_grad():
        for flip in (False, True):
            net(tensor.flip(3) if flip else tensor)
    net.eval()
    head = net.model[-1]
    torch.manual_seed(0)
    for branch in [*head.cv3, *getattr(head, "one2one_cv3", [])]:
        last = branch[-1]
        with torch.no_grad():
            last.bias.copy_(torch.randn_like(last.bias) * 0.5 - 2.0)
    if head.reg_max == 1:
        # YOLO26 regresses box side distances directly (no DFL): random weights
        # give negative ones, i.e. inverted boxes no trained model outputs.
        for branch in [*head.cv2, *getattr(head, "one2one_cv2", [])]:
            last = branch[-1]
            with torch.no_grad():
                last.weight.mul_(0.01)
                last.bias.fill_(1.0)


def export(workdir: Path, only: list[str] | None = None) -> None:
    """Runs in Ultralytics' venv: exports and reference predictions (of the
    variants named in `only`, others kept from an earlier run's reference.json)."""
    import numpy as np
    from ultralytics import YOLO

    os.chdir(workdir)
    # Ultralytics downloads this onnx2tf calibration file before a TF export;
    # nothing outside can be reached here, and it is not used for float exports.
    np.save(CALIBRATION_FILE, np.zeros((20, 128, 128, 3), np.float32))
    images = write_images(workdir)
    reference: dict[str, Any] = {"images": [p.name for p in images], "models": {}}
    earlier = workdir / "reference.json"
    if only and earlier.is_file():
        reference["models"] = json.loads(earlier.read_text())["models"]
    for name, yaml_file, args in VARIANTS:
        if only and name not in only:
            continue
        started = time.perf_counter()
        model = YOLO(yaml_file)
        _recalibrate(model, images)
        exported = Path(model.export(format="saved_model", imgsz=640, **args))
        target = workdir / f"{name}_saved_model"  # Ultralytics knows the format by this suffix
        shutil.rmtree(target, ignore_errors=True)
        exported.rename(target)
        for leftover in workdir.glob("*.onnx"):
            leftover.unlink()
        export_s = time.perf_counter() - started
        served = YOLO(str(target), task="detect")
        # The confidence that leaves about TARGET_BOXES boxes on the first image.
        scores = sorted(
            served(str(images[0]), conf=0.001, iou=IOU, verbose=False)[0].boxes.conf.tolist(),
            reverse=True,
        )
        conf = round(float(scores[min(TARGET_BOXES, len(scores)) - 1]) - 1e-4, 4)
        per_image = {}
        for path in images:
            result = served(str(path), conf=conf, iou=IOU, verbose=False)[0]
            per_image[path.name] = [
                {"class": int(c), "score": float(s), "box": [float(v) for v in box]}
                for box, c, s in zip(
                    result.boxes.xyxy.tolist(),
                    result.boxes.cls.tolist(),
                    result.boxes.conf.tolist(),
                    strict=True,
                )
            ]
        reference["models"][name] = {"conf": conf, "export_s": export_s, "boxes": per_image}
        print(f"{name}: exported in {export_s:.0f} s, conf {conf}", flush=True)
    (workdir / "reference.json").write_text(json.dumps(reference, indent=1))


def _pair(served: list[dict[str, Any]], expected: list[dict[str, Any]]) -> tuple[int, float, list]:
    """(pairs, max coordinate difference, problems): served boxes (float pixels)
    paired one to one with Ultralytics' (same class, every coordinate within 1 px)."""
    left = list(served)
    worst = 0.0
    problems = []
    for ref in expected:
        best, best_diff = None, None
        for box in left:
            if box["class"] != ref["class"]:
                continue
            diff = max(abs(a - b) for a, b in zip(box["box"], ref["box"], strict=True))
            if best_diff is None or diff < best_diff:
                best, best_diff = box, diff
        if best is None or best_diff is None or best_diff > 1.0:
            problems.append(f"no box within 1 px for {ref} (nearest {best_diff})")
            continue
        left.remove(best)
        worst = max(worst, best_diff)
    problems += [f"extra box {box}" for box in left]
    return len(expected) - len(problems), worst, problems


def compare(workdir: Path, models_dir: Path, rounds: int) -> int:
    """Runs in the project's venv: tfstream's boxes against reference.json, then timing."""

    from engines.boxes import to_pixels
    from engines.detector import load_detector
    from engines.images import decode_image
    from engines.repository import ModelRepository

    reference = json.loads((workdir / "reference.json").read_text())
    repo_dir = workdir / "repository"
    shutil.rmtree(repo_dir, ignore_errors=True)
    repo_dir.mkdir()
    for name in reference["models"]:
        # The export folder as the exporter wrote it, nothing added.
        shutil.copytree(workdir / f"{name}_saved_model", repo_dir / name)
    repo = ModelRepository(repo_dir)
    failures = 0
    for name, ref in reference["models"].items():
        detector = load_detector(repo.spec(name), device="cpu")
        print(f"{name}: {detector.engine.convention.describe()}, conf {ref['conf']}")
        for image_name in reference["images"]:
            pixels = decode_image((workdir / image_name).read_bytes())
            (raw,) = detector.engine.infer([pixels])
            det = to_pixels(
                raw,
                pixels.shape[1],
                pixels.shape[0],
                detector.spec.labels,
                detector.engine.convention,
            )
            served = [
                {"class": int(c), "score": float(s), "box": b.tolist()}
                for b, c, s in zip(det.boxes, det.classes, det.scores, strict=True)
                if s > ref["conf"]
            ]
            wire = detector.detect([pixels], [detector.options(ref["conf"] * 100, 300)])[0]
            expected = ref["boxes"][image_name]
            pairs, worst, problems = _pair(served, expected)
            failures += bool(problems) or len(wire) != len(expected)
            print(
                f"  {image_name}: {len(expected)} Ultralytics boxes, {len(served)} tfstream "
                f"({len(wire)} served), {pairs} paired, max difference {worst:.3f} px"
                + (f"; PROBLEMS: {problems[:3]}" if problems else "")
            )
    _timing(workdir, repo, models_dir, rounds)
    return 1 if failures else 0


def _timing(workdir: Path, repo: Any, models_dir: Path, rounds: int) -> None:
    """Per-image time at batch 1 (decoded 640x480 image in, boxes out), the YOLO11n
    export and ssd_mobilenet_v2_bench interleaved in one run."""
    from engines.detector import load_detector
    from engines.images import decode_image
    from engines.repository import ModelRepository

    yolo = load_detector(repo.spec("yolo11n_raw"), device="cpu")
    ssd = load_detector(ModelRepository(models_dir).spec("ssd_mobilenet_v2_bench"), device="cpu")
    image = decode_image((workdir / "image_640x480.png").read_bytes())
    times: dict[str, list[float]] = {"yolo11n_raw": [], "ssd_mobilenet_v2_bench": []}
    for _ in range(3):  # warm-up
        yolo.detect([image])
        ssd.detect([image])
    for _ in range(rounds):
        for name, detector in (("yolo11n_raw", yolo), ("ssd_mobilenet_v2_bench", ssd)):
            started = time.perf_counter()
            detector.detect([image])
            times[name].append((time.perf_counter() - started) * 1000)
    for name, values in times.items():
        print(
            f"timing {name}: median {statistics.median(values):.1f} ms/image, "
            f"p90 {sorted(values)[int(0.9 * len(values))]:.1f} ms ({rounds} images, batch 1, "
            f"{os.cpu_count()} CPUs)"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", nargs="?", default="all", choices=("all", "export", "compare"))
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/yolo-check"))
    parser.add_argument("--ultralytics-python", default="/work/yolo-venv/bin/python")
    parser.add_argument("--models", type=Path, default=Path("models"))
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--only", default="", help="export: comma-separated variants to redo")
    args = parser.parse_args(argv)
    args.workdir = args.workdir.resolve()
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.step == "export":
        export(args.workdir, [n for n in args.only.split(",") if n])
        return 0
    if args.step == "all":
        here = Path(__file__).resolve()
        # Ultralytics' venv must not see the project (nor the project its packages).
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        cmd = [args.ultralytics_python, str(here), "export", "--workdir", str(args.workdir)]
        subprocess.run(cmd, check=True, env=env, cwd=args.workdir)
    return compare(args.workdir, args.models.resolve(), args.rounds)


if __name__ == "__main__":
    sys.exit(main())
