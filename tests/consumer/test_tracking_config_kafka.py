"""Tracking turned on by a model's config.json, and changed by `tfstream-zones` without
restarting the worker (issue 30): a real broker, one worker, the shapes_tf2 model."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from deploy.local.processes import ConsumerProcess
from engines.modelgen.paths import make_scene
from producer_tools import camera_zones
from producer_tools.results import describe
from tests.support.scene_video import render_frames
from tests.support.workers import headers, raw_producer, read_topic, unique_prefix

pytestmark = pytest.mark.slow


async def _send(bootstrap: str, topic: str, camera: str, images: list[bytes], tag: str) -> None:
    async with raw_producer(bootstrap) as producer:
        for index, image in enumerate(images):
            await producer.send(
                topic,
                image,
                key=camera.encode(),
                headers=headers(correlation_id=f"{tag}-{index}", capture_ms=index * 66),
            )
        await producer.flush()


def _answers(records: list[Any], tag: str) -> list[Any]:
    return [
        line
        for line in (describe(r) for r in records)
        if line is not None and (line.correlation_id or "").startswith(f"{tag}-")
    ]


@pytest.mark.asyncio
async def test_a_model_default_tracks_and_a_published_change_applies_without_restart(
    kafka_bootstrap: str, serving_repository: Path, tmp_path: Path
) -> None:
    repository = tmp_path / "repo"
    shutil.copytree(serving_repository / "shapes_tf2", repository / "shapes_tf2")
    config_path = repository / "shapes_tf2" / "config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "tracking": True}))

    scene = make_scene(9, movers=7, frames=200, width=480, height=360, fps=15.0)
    scene = replace(scene, frames=40)  # the first 40 frames are enough here
    images = render_frames(scene, seed=2)
    prefix = unique_prefix()
    requests = f"{prefix}.requests.shapes_tf2"
    results = f"{prefix}.results.shapes_tf2"
    worker = ConsumerProcess(
        kafka_bootstrap,
        repository,
        prefix,
        tmp_path,
        extra={"TFSTREAM_MODELS": "shapes_tf2", "TFSTREAM_ANSWER_LOG": "true"},
    ).start()
    try:
        worker.wait_ready()
        # The model's default: a camera nobody configured is tracked.
        await _send(kafka_bootstrap, requests, "dock", images[:20], "on")
        records = await read_topic(
            kafka_bootstrap, results, 20, until=lambda r: len(_answers(r, "on")) >= 20
        )
        tracked = _answers(records, "on")
        assert all(line.success for line in tracked)
        assert any(t is not None for line in tracked for t in line.track_ids)
        logged = await read_topic(kafka_bootstrap, f"{prefix}.answers.shapes_tf2", 20)
        boxes = [
            b
            for r in logged
            for b in (json.loads(r.value)["reply"]["data"] or {}).get("bounding-boxes", [])
        ]
        assert any(b.get("track_id") is not None for b in boxes)  # the answer log has them too

        # tfstream-zones turns the camera's tracking off: the running worker follows.
        cameras = tmp_path / "cameras.yaml"
        cameras.write_text("cameras:\n  - camera: dock\n    tracking: false\n")
        argv = ["--bootstrap", kafka_bootstrap, "--topic-prefix", prefix, "--file", str(cameras)]
        assert await asyncio.to_thread(camera_zones.main, argv) == 0
        deadline = time.monotonic() + 30
        while not [r for r in worker.log_records() if r.get("msg") == "camera configured"]:
            assert time.monotonic() < deadline, worker.log_tail()
            await asyncio.sleep(0.2)
        await _send(kafka_bootstrap, requests, "dock", images[20:30], "off")
        records = await read_topic(
            kafka_bootstrap, results, 30, until=lambda r: len(_answers(r, "off")) >= 10
        )
        untracked = _answers(records, "off")
        assert len(untracked) == 10 and all(line.success for line in untracked)
        assert all(line.track_ids == [] for line in untracked)  # answered as without tracking
        assert sum(line.boxes for line in untracked) > 0

        # A broken file changes nothing and says why.
        cameras.write_text("cameras:\n  - camera: dock\n    lines: [{name: x}]\n")
        assert await asyncio.to_thread(camera_zones.main, argv) == 1
    finally:
        worker.stop()
