"""Weights that no longer serve are freed: after a reload, after a version that
failed to load, and in a pipeline lane that served the old weights.

Real TensorFlow engines on the generated shapes model. "Freed" is what the
garbage collector says once `gc.collect()` ran: no engine object of the old or
failed version is still reachable (a TF engine holds its graph and, on a GPU,
its device memory for as long as it lives).
"""

from __future__ import annotations

import asyncio
import gc
import json
import shutil
import weakref
from pathlib import Path

import pytest

from consumer.pipeline import Pipeline
from consumer.protocol import ModelState
from consumer.registry import ModelRegistry
from consumer.settings import EngineSettings
from engines.repository import ModelRepository
from tests.consumer.fakes import (
    CountingEngine,
    fake_model_worker,
    jpeg,
    request,
)
from tests.support.workers import wait_for

pytestmark = pytest.mark.slow  # TensorFlow loads the shapes model four times


def live_engines() -> list[object]:
    from engines.tf2 import TF2Engine

    gc.collect()
    return [o for o in gc.get_objects() if isinstance(o, TF2Engine)]


def versioned(model_repository: Path, root: Path) -> Path:
    """`m` with the shapes_tf2 model as its version 1."""
    folder = root / "m"
    shutil.copytree(model_repository / "shapes_tf2", folder / "1")
    return folder


def test_a_reload_and_a_failed_version_leave_only_the_serving_engine_alive(
    model_repository: Path, tmp_path: Path
) -> None:
    folder = versioned(model_repository, tmp_path)
    registry = ModelRegistry(ModelRepository(tmp_path), ["m"], "cpu")
    before = {id(o) for o in live_engines()}  # other tests' engines, if any
    first = registry.load("m")
    assert first.state is ModelState.READY
    old = weakref.ref(first.detector.engine)  # type: ignore[union-attr]
    del first
    reloaded = registry.load("m", force=True)
    assert reloaded.state is ModelState.READY
    gc.collect()
    assert old() is None, gc.get_referrers(old())

    # Version 2 builds its engine (the SavedModel loads), then its config.json is
    # refused: the engine under construction must not outlive the error kept for it.
    shutil.copytree(folder / "1", folder / "2")
    config = json.loads((folder / "2" / "config.json").read_text())
    (folder / "2" / "config.json").write_text(json.dumps({**config, "iou_threshold": 0.5}))
    entry = registry.refresh("m")
    assert entry is not None and entry.version == 1 and entry.failed is not None
    assert entry.failed.version == 2 and entry.failed.error.code == "invalid_model_config"
    serving = registry.detector("m").engine
    assert [o for o in live_engines() if id(o) not in before] == [serving]
    # The error still says what an answer and an announcement need.
    assert "iou_threshold" in entry.failed.error.message


@pytest.mark.asyncio
async def test_a_lane_lets_go_of_the_weights_a_reload_replaced(
    model_repository: Path, tmp_path: Path
) -> None:
    versioned(model_repository, tmp_path)
    registry = ModelRegistry(ModelRepository(tmp_path), ["m"], "cpu")
    await asyncio.to_thread(registry.load, "m")
    pipeline = Pipeline(registry, EngineSettings(), "w1")
    pipeline.start()
    try:
        answer = await asyncio.wait_for(pipeline.submit(request("m", "1", jpeg(64, 48))), 60)
        assert answer.error is None and answer.reply.model_version == 1
        old = weakref.ref(registry.detector("m").engine)
        await asyncio.to_thread(registry.load, "m", True)
        # No request came since: the lane must not keep the replaced weights until one does.
        gc.collect()
        assert old() is None, [type(r).__name__ for r in gc.get_referrers(old())]
        answer = await asyncio.wait_for(pipeline.submit(request("m", "2", jpeg(64, 48))), 60)
        assert answer.error is None
    finally:
        await asyncio.wait_for(pipeline.close(), 30)


class CyclicEngine(CountingEngine):
    """A fake engine in a reference cycle, as a TensorFlow engine is (which is why the
    tests above need `gc.collect()`): only the cyclic collector frees it."""

    def __init__(self) -> None:
        super().__init__()
        self.me = self


@pytest.mark.kafka
@pytest.mark.asyncio
async def test_a_running_worker_frees_the_weights_a_reload_replaced(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """The worker hides what lives as long as the process from the cyclic collector
    (`gc.freeze`); the models loaded at start must not be among it, or weights a
    reload or a new version replaced would stay in memory (on a GPU, its memory)."""
    worker = fake_model_worker(kafka_bootstrap, tmp_path, CyclicEngine, device="cpu")
    running = asyncio.create_task(worker.run())
    try:
        await wait_for(lambda: worker.joined or running.done(), timeout_s=120)
        assert not running.done()
        old = weakref.ref(worker.registry.detector("m").engine)
        reloaded = await asyncio.to_thread(worker.registry.load, "m", True)
        assert reloaded.state is ModelState.READY
        gc.collect()
        assert old() is None, "the weights loaded at start outlived their reload"
    finally:
        worker.stopping.set()
        await asyncio.wait_for(running, 60)
