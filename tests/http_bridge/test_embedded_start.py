"""The embedded bridge serves from its first second: /docs and /health/live answer
while its models load, and a request for a model still loading waits for it.

The load is held by an engine factory that waits on a gate (the registry's
factory is the seam), so the test controls when loading ends: no sleeps decide.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from consumer.metrics import WorkerMetrics
from consumer.registry import ModelRegistry
from engines.repository import ModelRepository
from http_bridge.app import create_app
from http_bridge.embedded import EmbeddedBackend
from http_bridge.settings import BridgeSettings
from tests.consumer.fakes import GatedFactory, jpeg, write_fake_model


@pytest.mark.asyncio
async def test_docs_and_liveness_answer_while_models_load_and_requests_wait(
    tmp_path: Path,
) -> None:
    write_fake_model(tmp_path, "m", version=1)
    settings = BridgeSettings(repository=tmp_path, poll_interval_s=0, answer_timeout_s=30)
    factory = GatedFactory()
    registry = ModelRegistry(ModelRepository(tmp_path), None, "cpu", factory)
    backend = EmbeddedBackend(settings, WorkerMetrics(), registry=registry)
    app = create_app(settings, backend)
    await asyncio.wait_for(backend.start(), 5)  # returns at once: loading goes on behind
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bridge") as client:
            assert await asyncio.to_thread(factory.loading.wait, 10)
            assert (await client.get("/health/live")).status_code == 200
            assert (await client.get("/docs")).status_code == 200
            ready = await client.get("/health/ready")
            assert ready.status_code == 503 and ready.json()["models"] == {"m": "loading"}
            asking = asyncio.create_task(
                client.post("/models/m/predict", files={"input_data": ("a.jpg", jpeg(64, 48))})
            )
            await asyncio.sleep(0.5)
            assert not asking.done()  # waiting for the model, not refused
            factory.gate.set()
            answer = await asyncio.wait_for(asking, 30)
            assert answer.status_code == 200, answer.text
            assert len(answer.json()["data"]["bounding-boxes"]) == 1
            assert answer.headers["Model-Version"] == "1"
            listed = (await client.get("/models")).json()["data"]
            assert listed["models"] == ["m"] and listed["versions"]["m"]["version"] == 1
            assert len(listed["versions"]["m"]["fingerprint"]) == 16
    finally:
        factory.gate.set()
        await backend.stop()
        await app.state.supervisor.stop()
