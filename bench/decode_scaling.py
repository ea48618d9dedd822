"""Full JPEG decode against DCT-scaled decode: how far apart are the boxes, and what
does the full decode cost (issue 28, point 5; the figures are in
docs/model-formats.md, "The pixels the model sees").

libjpeg can decode a JPEG at 1/2, 1/4 or 1/8 scale for a fraction of a full
decode (`engines/images.py`); the model then resizes those pixels, not the
full-resolution ones its exporter's own predict resizes. This measures, per
generated export (the shapes detector in each exporter's layout,
engines/modelgen: generated shape detectors, not real-weight models), on
random shapes scenes at 1920x1080 and 3840x2160 saved as JPEG (quality 90):
boxes paired per class (IoU >= 0.5, optimal assignment), boxes found by one
decode only, the largest and mean corner difference in image pixels, and the
decode time of each (median, this machine's CPU).

    .venv/bin/python -m bench.decode_scaling --frames 20
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

import numpy as np

MODELS = (
    "shapes_tf2",
    "yolo11_shapes_raw",
    "yolo26_shapes_end2end",
    "keras_hub_shapes",
    "keras_hub_shapes_pad",
    "keras_hub_shapes_stretch",
)
RESOLUTIONS = {"1080p": (1920, 1080), "4K": (3840, 2160)}


def frames(width: int, height: int, count: int, seed: int = 28) -> list[bytes]:
    from PIL import Image

    from engines.modelgen.images import draw_shapes_image

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        picture, _truth = draw_shapes_image(rng, width, height, empty_probability=0.0)
        buffer = io.BytesIO()
        Image.fromarray(np.asarray(picture)).save(buffer, format="JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def _median_ms(fn, repeat: int = 3) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def measure(repository: Path, model: str, payloads: list[bytes]) -> dict[str, float | int | str]:
    from engines.detector import load_detector
    from engines.images import decode_for_model
    from engines.repository import ModelRepository
    from producer_tools.diff_match import match_boxes

    detector = load_detector(ModelRepository(repository).spec(model), device="cpu")
    resizer = detector.spec.resizer
    assert resizer is not None, f"{model} declares no input size: nothing to scale"
    boxes = matched = only_one = 0
    worst, diffs = 0.0, []
    full_ms, scaled_ms = [], []
    for data in payloads:
        full = decode_for_model(data)
        scaled = decode_for_model(data, resizer=resizer)
        full_ms.append(_median_ms(lambda data=data: decode_for_model(data)))
        scaled_ms.append(_median_ms(lambda data=data: decode_for_model(data, resizer=resizer)))
        (a,) = detector.detect([full.pixels])
        (b,) = detector.detect([scaled.pixels], sizes=[(scaled.width, scaled.height)])
        pairs = match_boxes(a, b, 0.5)
        boxes += len(a)
        matched += len(pairs)
        only_one += len(a) + len(b) - 2 * len(pairs)
        for pair in pairs:
            ca, cb = a[pair.baseline]["coordinates"], b[pair.candidate]["coordinates"]
            corner = max(abs(ca[k] - cb[k]) for k in ("left", "top", "right", "bottom"))
            worst = max(worst, corner)
            diffs.append(corner)
    return {
        "model": model,
        "scale": f"{scaled.pixels.shape[1]}x{scaled.pixels.shape[0]}",
        "boxes_full": boxes,
        "matched": matched,
        "only_one": only_one,
        "max_px": worst,
        "mean_px": statistics.fmean(diffs) if diffs else 0.0,
        "decode_full_ms": statistics.median(full_ms),
        "decode_scaled_ms": statistics.median(scaled_ms),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, default=Path("models"))
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--models", default=",".join(MODELS))
    args = parser.parse_args(argv)
    from engines.modelgen.generate import generate_models

    models = args.models.split(",")
    generate_models(args.repository, models)
    print(
        f"{'resolution':<10} {'model':<26} {'decoded':>9} {'boxes':>5} {'matched':>7} "
        f"{'one-side':>8} {'max px':>6} {'mean px':>7} {'full ms':>7} {'scaled ms':>9}"
    )
    for label, (width, height) in RESOLUTIONS.items():
        payloads = frames(width, height, args.frames)
        for model in models:
            r = measure(args.repository, model, payloads)
            print(
                f"{label:<10} {model:<26} {r['scale']:>9} {r['boxes_full']:>5} {r['matched']:>7} "
                f"{r['only_one']:>8} {r['max_px']:>6.0f} {r['mean_px']:>7.2f} "
                f"{r['decode_full_ms']:>7.1f} {r['decode_scaled_ms']:>9.1f}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
