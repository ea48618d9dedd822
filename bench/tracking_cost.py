"""Tracking cost per camera: apply() per frame, state record size, save and restore time.

In-process, no Kafka: the frames are shapes moving on known paths
(engines/modelgen/paths.py) with detector-like noise, through
consumer/tracking/state.apply with one line and one zone. Two scenes: the
shapes scene (640x480, at most 4 objects in view) and a crowded one (1920x1080,
about 20 in view). The reference in the same run is the raw engine's time for
one 640x480 frame at batch 1 (decode + inference, bench/raw_engine.measure), when
the model is in the repository.

    python -m bench.tracking_cost --repository models --model ssd_mobilenet_v2_bench
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from consumer.tracking.config import CameraConfig, LineConfig, ZoneConfig
from consumer.tracking.events import Position
from consumer.tracking.state import CameraState, apply
from engines.modelgen.paths import Scene, make_scene, noisy_frames


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def scene_cost(name: str, scene: Scene, restores: int) -> dict[str, Any]:
    config = CameraConfig(
        camera=name,
        lines=[LineConfig(name="door", start=scene.line_start, end=scene.line_end)],
        zones=[ZoneConfig(name="bay", polygon=scene.zone_polygon)],
    )
    frames = noisy_frames(scene, seed=1)
    state = CameraState.new(config)
    apply_ms: list[float] = []
    save_ms: list[float] = []
    sizes: list[int] = []
    biggest = b""
    events = 0
    for frame in frames:
        position = Position("bench", 0, frame.index)
        t0 = time.perf_counter()
        _, new = apply(state, position, frame.boxes, frame.timestamp_s)
        for event in new:
            event.to_record()
        t1 = time.perf_counter()
        record = state.to_bytes()
        t2 = time.perf_counter()
        apply_ms.append((t1 - t0) * 1000)
        save_ms.append((t2 - t1) * 1000)
        sizes.append(len(record))
        events += len(new)
        if len(record) > len(biggest):
            biggest = record
    restore_ms = []
    for _ in range(restores):
        t0 = time.perf_counter()
        CameraState.from_bytes(config, biggest)
        restore_ms.append((time.perf_counter() - t0) * 1000)
    in_view = [len(f.truth) for f in frames]
    return {
        "scene": name,
        "frames": len(frames),
        "objects_in_view_mean": round(statistics.mean(in_view), 1),
        "objects_in_view_max": max(in_view),
        "events": events,
        "apply_ms_p50": round(statistics.median(apply_ms), 3),
        "apply_ms_p99": round(_percentile(apply_ms, 0.99), 3),
        "save_ms_p50": round(statistics.median(save_ms), 3),
        "state_bytes_p50": int(statistics.median(sizes)),
        "state_bytes_max": max(sizes),
        "restore_ms_p50": round(statistics.median(restore_ms), 3),
        "restore_ms_p99": round(_percentile(restore_ms, 0.99), 3),
    }


def detection_ms(repository: Path, model: str, seconds: float) -> float | None:
    """Median ms of one 640x480 frame through the raw engine (decode + inference)."""
    if not (repository / model).is_dir():
        return None
    from bench.raw_engine import measure, sample_jpegs
    from engines.detector import load_detector
    from engines.repository import ModelRepository

    detector = load_detector(ModelRepository(repository).spec(model))
    return measure(detector, sample_jpegs(), 1, seconds).p50_ms


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repository", type=Path, default=Path("models"))
    parser.add_argument("--model", default="ssd_mobilenet_v2_bench")
    parser.add_argument("--seconds", type=float, default=5.0, help="detection reference time")
    parser.add_argument("--restores", type=int, default=200, help="restores timed per scene")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    scenes = [
        ("shapes_640x480", make_scene(seed=1, movers=24, frames=900)),
        (
            "crowd_1920x1080",
            make_scene(
                seed=2, movers=150, frames=900, width=1920, height=1080, one_per_class=False
            ),
        ),
    ]
    rows = [scene_cost(name, scene, args.restores) for name, scene in scenes]
    reference = detection_ms(args.repository, args.model, args.seconds)
    for row in rows:
        ratio = f"{row['apply_ms_p50'] / reference:.3f}" if reference else "n/a"
        print(
            f"{row['scene']:16s} {row['objects_in_view_mean']:5.1f} objects in view: "
            f"apply p50 {row['apply_ms_p50']:.3f} ms p99 {row['apply_ms_p99']:.3f} ms "
            f"(x{ratio} of detection), save p50 {row['save_ms_p50']:.3f} ms, "
            f"state p50 {row['state_bytes_p50']} B max {row['state_bytes_max']} B, "
            f"restore p50 {row['restore_ms_p50']:.3f} ms p99 {row['restore_ms_p99']:.3f} ms, "
            f"{row['events']} events (events/s with Kafka writes: bench.tracking_events)",
            flush=True,
        )
    if reference is not None:
        print(f"detection reference: {args.model} batch 1, p50 {reference:.1f} ms per frame")
    if args.json:
        args.json.write_text(json.dumps({"scenes": rows, "detection_ms_p50": reference}, indent=2))


if __name__ == "__main__":
    main()
