"""Batching that follows the model, on real generated TensorFlow graphs (no broker).

`shapes_tf2` is exported with a fixed batch of 1, as most Object Detection API
exports are; `shapes_tf1` takes any batch."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from consumer.batching import Batching
from consumer.pipeline import Answer, Pipeline
from consumer.registry import ModelRegistry
from consumer.settings import EngineSettings
from engines.repository import ModelRepository
from tests.consumer.fakes import request

pytestmark = [pytest.mark.slow]


async def serve(
    repository: Path, model: str, settings: EngineSettings, images: list[bytes]
) -> tuple[Pipeline, list[Answer]]:
    registry = ModelRegistry(ModelRepository(repository), [model], device="cpu")
    assert (await asyncio.to_thread(registry.load, model)).error is None
    pipeline = Pipeline(registry, settings, "w")
    pipeline.start()
    try:
        futures = [
            pipeline.submit(request(model, f"r{i}", image)) for i, image in enumerate(images)
        ]
        done = list(await asyncio.wait_for(asyncio.gather(*futures), 120))
    finally:
        await asyncio.wait_for(pipeline.close(), 60)
    return pipeline, done


def batch_histogram(pipeline: Pipeline, model: str) -> tuple[float | None, float | None]:
    registry = pipeline.metrics.registry
    return (
        registry.get_sample_value("tfstream_batch_size_count", {"model": model}),
        registry.get_sample_value("tfstream_batch_size_sum", {"model": model}),
    )


def jpegs(shapes_images: tuple[Path, dict[str, object]], count: int) -> list[bytes]:
    folder, truth = shapes_images
    names = [n for n in sorted(truth) if n.endswith(".jpg")][:count]
    return [(folder / n).read_bytes() for n in names]


@pytest.mark.asyncio
async def test_a_fixed_batch_1_model_answers_8_concurrent_requests_in_8_calls_of_1(
    model_repository: Path, shapes_images: tuple[Path, dict[str, object]]
) -> None:
    settings = EngineSettings(max_batch=8, max_delay_ms=20)
    pipeline, done = await serve(model_repository, "shapes_tf2", settings, jpegs(shapes_images, 8))
    # The CPU default for a fixed-batch graph (2): two calls of 1 at once, each still of 1.
    assert pipeline.batching("shapes_tf2") == Batching(max_batch=1, max_delay_s=0.02, instances=2)
    assert all(a.reply.success for a in done), [a.error for a in done]
    assert [a.reply.timing.batch_size for a in done] == [1] * 8  # type: ignore[union-attr]
    assert batch_histogram(pipeline, "shapes_tf2") == (8, 8)  # 8 engine calls of 1


@pytest.mark.asyncio
async def test_config_json_batching_overrides_the_command_line(
    model_repository: Path,
    shapes_images: tuple[Path, dict[str, object]],
    tmp_path: Path,
) -> None:
    folder = tmp_path / "shapes_tf1"
    shutil.copytree(model_repository / "shapes_tf1", folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(max_batch=3, max_delay_ms=5, instances=2)
    (folder / "config.json").write_text(json.dumps(config))
    settings = EngineSettings(max_batch=8, max_delay_ms=0, instances=1)
    same_size = jpegs(shapes_images, 1) * 8  # sizes differ between the test images
    pipeline, done = await serve(tmp_path, "shapes_tf1", settings, same_size)
    assert pipeline.batching("shapes_tf1") == Batching(max_batch=3, max_delay_s=0.005, instances=2)
    assert all(a.reply.success for a in done), [a.error for a in done]
    sizes = [a.reply.timing.batch_size for a in done]  # type: ignore[union-attr]
    assert max(sizes) == 3 and sum(sizes) > 8  # shared calls of at most 3 (not one of 8)
    calls, images = batch_histogram(pipeline, "shapes_tf1")
    assert images == 8 and calls is not None and calls >= 3
