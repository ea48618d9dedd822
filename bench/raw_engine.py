"""Raw-engine throughput: decode + inference in-process, no Kafka, no HTTP.

This is the reference every other benchmark is a ratio of. For each model
it reports images/s at batch 1 and at each batch size up to `--max-batch`,
and names the best one.

    python -m bench.raw_engine --repository models --models ssd_mobilenet_v2_bench
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from engines.detector import Detector, load_detector
from engines.images import decode_image
from engines.repository import ModelRepository


@dataclass
class RawResult:
    model: str
    batch: int
    images_per_s: float
    p50_ms: float
    """Median time of one batch (decode + inference)."""
    p99_ms: float
    batches: int


def sample_jpegs(
    count: int = 32, width: int = 640, height: int = 480, seed: int = 0
) -> list[bytes]:
    """640x480 JPEGs of the shapes scenes: realistic sizes and entropy for decoding."""
    from engines.modelgen.images import draw_shapes_image

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        image, _ = draw_shapes_image(rng, width, height)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def textured_jpegs(
    count: int, width: int = 1920, height: int = 1080, seed: int = 0, grain: float = 6.5
) -> list[bytes]:
    """Camera-like frames: the shapes scenes with sensor-like grain (Gaussian, `grain`
    levels), JPEG quality 85. At 1920x1080 they are about 440 KB, as real camera
    frames are, against ~260 KB for the flat scenes of `sample_jpegs`: more bytes
    to copy, more entropy to decode."""
    from PIL import Image

    from engines.modelgen.images import draw_shapes_image

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        image, _ = draw_shapes_image(rng, width, height)
        pixels = np.asarray(image, dtype=np.float32)
        pixels += rng.normal(0, grain, pixels.shape[:2])[..., np.newaxis]
        buffer = io.BytesIO()
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
            buffer, format="JPEG", quality=85
        )
        out.append(buffer.getvalue())
    return out


def measure(detector: Detector, jpegs: list[bytes], batch: int, seconds: float) -> RawResult:
    """Decode `batch` images and run them in one engine call, repeatedly, for `seconds`."""
    for _ in range(2):  # warm-up: first calls of a new batch shape trace and allocate
        detector.detect([decode_image(j) for j in jpegs[:batch]])
    durations: list[float] = []
    started = time.perf_counter()
    i = 0
    while time.perf_counter() - started < seconds or len(durations) < 3:
        chunk = [jpegs[(i + k) % len(jpegs)] for k in range(batch)]
        i += batch
        t0 = time.perf_counter()
        detector.detect([decode_image(j) for j in chunk])
        durations.append(time.perf_counter() - t0)
    total = sum(durations)
    ordered = sorted(durations)
    return RawResult(
        model=detector.spec.name,
        batch=batch,
        images_per_s=batch * len(durations) / total,
        p50_ms=statistics.median(durations) * 1000,
        p99_ms=ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000,
        batches=len(durations),
    )


def batch_sizes(max_batch: int) -> list[int]:
    sizes = [1]
    while sizes[-1] * 2 <= max_batch:
        sizes.append(sizes[-1] * 2)
    if sizes[-1] != max_batch:
        sizes.append(max_batch)
    return sizes


def run(repository: Path, models: list[str], max_batch: int, seconds: float) -> list[RawResult]:
    repo = ModelRepository(repository)
    jpegs = sample_jpegs()
    results: list[RawResult] = []
    for name in models:
        detector = load_detector(repo.spec(name))
        sizes = batch_sizes(max_batch) if detector.engine.fixed_batch is None else [1]
        for batch in sizes:
            result = measure(detector, jpegs, batch, seconds)
            results.append(result)
            print(
                f"{name:28s} batch {batch:2d}: {result.images_per_s:8.1f} images/s  "
                f"p50 {result.p50_ms:7.1f} ms  p99 {result.p99_ms:7.1f} ms  "
                f"({result.batches} batches)",
                flush=True,
            )
        best = max((r for r in results if r.model == name), key=lambda r: r.images_per_s)
        print(f"{name:28s} best batch {best.batch}: {best.images_per_s:.1f} images/s", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repository", type=Path, default=Path("models"))
    parser.add_argument(
        "--models",
        default="ssd_mobilenet_v2_bench,shapes_tf2,shapes_tf1",
        help="comma-separated model names",
    )
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5.0, help="measuring time per batch size")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    import tensorflow as tf

    results = run(
        args.repository, [m for m in args.models.split(",") if m], args.max_batch, args.seconds
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "machine": platform.processor() or platform.machine(),
                    "python": platform.python_version(),
                    "tensorflow": tf.__version__,
                    "date": time.strftime("%Y-%m-%d"),
                    "results": [asdict(r) for r in results],
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
