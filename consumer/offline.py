"""Answers for a folder of images, in this process: no Kafka, the worker's own code.

`tfstream-diff --images DIR --baseline-repo A --candidate-repo B` compares two
model repositories on the same images, the check to put in a model's CI. Both
sides run through the registry and pipeline a worker runs (decoding, resizing,
the model's confidence and prediction limits, error codes), so a difference
found here is one that live traffic would show. It lives in `consumer` because
it needs the engines; `producer_tools.diff` imports it only for an offline run.

Images are answered one at a time, so each latency is this process's decode
plus inference for one image, comparable between the two sides.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

from consumer.metrics import WorkerMetrics
from consumer.pipeline import Pipeline
from consumer.protocol import Reply, Request
from consumer.registry import ModelRegistry
from consumer.settings import EngineSettings
from engines.errors import InvalidRequest, ModelNotFound

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"})


@dataclass(frozen=True)
class OfflineAnswer:
    name: str
    """The image's file name, also its correlation id."""
    reply: Reply
    latency_ms: float


def image_files(folder: Path) -> list[Path]:
    """The images of `folder` (by suffix), sorted by name.

    Raises:
        InvalidRequest: not a folder, or no image in it.
    """
    if not folder.is_dir():
        raise InvalidRequest(f"{folder} is not a folder")
    found = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not found:
        raise InvalidRequest(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}")
    return found


def common_model(baseline: Path, candidate: Path, model: str | None) -> str:
    """`model`, or the one model both repositories have.

    Raises:
        ModelNotFound: `model` missing from either, or no single common model.
    """
    from engines.repository import ModelRepository

    names = [set(ModelRepository(root).names()) for root in (baseline, candidate)]
    if model is not None:
        for root, found in zip((baseline, candidate), names, strict=True):
            if model not in found:
                raise ModelNotFound(f"model '{model}' is not in {root} ({sorted(found)})")
        return model
    shared = sorted(names[0] & names[1])
    if len(shared) != 1:
        raise ModelNotFound(
            f"name the model to compare with --model: the repositories share {shared or 'none'}"
        )
    return shared[0]


async def answer_images(
    repository: Path, model: str, images: list[Path], device: str = "auto"
) -> list[OfflineAnswer]:
    """Load `model` from `repository` and answer every image, one after another.

    Raises:
        TfstreamError: the model cannot be loaded (its own error).
    """
    settings = EngineSettings(repository=repository, models=model, device=device)
    registry = ModelRegistry.from_settings(settings)
    entry = await asyncio.to_thread(registry.load, model)
    if entry.error is not None:
        raise entry.error
    pipeline = Pipeline(registry, settings, f"offline:{repository}", WorkerMetrics())
    pipeline.start()
    answers = []
    try:
        for path in images:
            request = Request(
                model=model, correlation_id=path.name, image=path.read_bytes(), image_name=path.name
            )
            started = time.perf_counter()
            answer = await pipeline.submit(request)
            elapsed_ms = (time.perf_counter() - started) * 1000
            answers.append(OfflineAnswer(path.name, answer.reply, elapsed_ms))
    finally:
        await pipeline.close()
    return answers
