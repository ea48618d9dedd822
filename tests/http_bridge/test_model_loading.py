"""A model still loading answers 503 `model_loading` (retryable, Retry-After) where
its facts are asked for, in both bridge modes, and its facts once it is ready.

Embedded: the registry's engine factory waits on a gate, so the test decides when
loading ends. Kafka: the bridge reads a real broker's `<prefix>.models`, where the
test announces the model `loading` (as a starting worker does) and later `ready`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from consumer.metrics import WorkerMetrics
from consumer.protocol import Announcement, ModelState, Topics, announcement_key
from consumer.registry import Entry, ModelRegistry, model_facts
from engines.errors import ModelLoadFailed
from engines.repository import ModelRepository
from http_bridge.app import create_app
from http_bridge.embedded import EmbeddedBackend
from http_bridge.settings import BridgeSettings
from tests.consumer.fakes import GatedFactory, write_fake_model
from tests.support.workers import create_topic, raw_producer, unique_prefix, wait_for

LABELS = ["thing"]  # tests.consumer.fakes.FAKE_LABELS


def assert_loading(r: httpx.Response) -> None:
    assert r.status_code == 503, r.text
    assert r.json()["code"] == "model_loading" and r.json()["success"] is False
    assert r.json()["error"].startswith("model 'm' is still loading")
    assert r.headers["Retry-After"] == "5"


async def assert_every_route_says_loading(client: httpx.AsyncClient) -> None:
    assert_loading(await client.get("/models/m/labels"))
    assert_loading(await client.get("/models/m/config"))
    assert_loading(await client.post("/get_labels", data={"model": "m"}))
    listed = await client.get("/models")
    assert listed.status_code == 200 and listed.headers["Retry-After"] == "5"
    assert listed.json()["data"]["models"] == ["m"]
    entry = listed.json()["data"]["versions"]["m"]
    assert entry["code"] == "model_loading" and entry["retryable"] is True
    assert (entry["version"], entry["fingerprint"]) == (0, "")


async def assert_every_route_answers(client: httpx.AsyncClient) -> None:
    labels = await client.get("/models/m/labels")
    assert labels.status_code == 200 and labels.json()["data"] == LABELS
    config = await client.get("/models/m/config")
    assert config.status_code == 200 and set(config.json()["data"]) == {
        "framework",
        "type",
        "network",
    }
    by_form = await client.post("/get_labels", data={"model": "m"})
    assert by_form.status_code == 200 and list(by_form.json()) == LABELS
    listed = await client.get("/models")
    assert listed.status_code == 200 and "Retry-After" not in listed.headers
    assert listed.json()["data"]["versions"]["m"]["version"] == 1
    assert "code" not in listed.json()["data"]["versions"]["m"]


@pytest.mark.asyncio
async def test_embedded_a_model_still_loading_answers_model_loading(tmp_path: Path) -> None:
    write_fake_model(tmp_path, "m", version=1)
    write_fake_model(tmp_path, "left_out", version=1)
    settings = BridgeSettings(repository=tmp_path, models="m", poll_interval_s=0)
    factory = GatedFactory()
    registry = ModelRegistry(ModelRepository(tmp_path), ["m"], "cpu", factory)
    backend = EmbeddedBackend(settings, WorkerMetrics(), registry=registry)
    app = create_app(settings, backend)
    await backend.start()
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bridge") as client:
            assert await asyncio.to_thread(factory.loading.wait, 10)
            await assert_every_route_says_loading(client)
            # A model in the folder that --models leaves out is not "loading" for ever.
            left_out = await client.get("/models/left_out/labels")
            assert left_out.status_code == 503 and left_out.json()["code"] == "model_unavailable"
            factory.gate.set()
            await wait_for(lambda: registry.entry("m").state is ModelState.READY, 30)
            await assert_every_route_answers(client)
    finally:
        factory.gate.set()
        await backend.stop()
        await app.state.supervisor.stop()


async def announce(bootstrap: str, prefix: str, entry: Entry, worker: str = "w-test") -> None:
    announcement = Announcement(model_facts(entry), worker=worker)
    async with raw_producer(bootstrap) as producer:
        await producer.send_and_wait(
            Topics(prefix).models, announcement.to_json(), key=announcement_key("m", worker)
        )


async def kafka_bridge(bootstrap: str, prefix: str) -> AsyncIterator[httpx.AsyncClient]:
    settings = BridgeSettings(bootstrap=bootstrap, topic_prefix=prefix, start_timeout_s=60)
    app = create_app(settings)
    backend = app.state.backend
    await backend.start()
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bridge") as client:
            yield client
    finally:
        await backend.stop()
        await app.state.supervisor.stop()


@pytest.mark.kafka
@pytest.mark.asyncio
async def test_kafka_a_model_announced_loading_answers_model_loading(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    prefix = unique_prefix()
    await create_topic(kafka_bootstrap, Topics(prefix).models)
    # What a starting worker announces: the model, before its folder is even read.
    await announce(kafka_bootstrap, prefix, Entry("m", ModelState.LOADING))
    # Another worker failed to load it, later: the first may still bring it up, so
    # the answer stays "loading" (not that worker's error, nor facts without weights).
    broken = Entry("m", ModelState.FAILED, error=ModelLoadFailed("broken on w-other"))
    await announce(kafka_bootstrap, prefix, broken, worker="w-other")
    async for client in kafka_bridge(kafka_bootstrap, prefix):
        await assert_every_route_says_loading(client)
        # The worker's weights are in: it announces `ready` with its spec.
        write_fake_model(tmp_path, "m", version=1)
        spec = ModelRepository(tmp_path).spec("m")
        await announce(
            kafka_bootstrap,
            prefix,
            Entry("m", ModelState.READY, spec=spec, fingerprint="f1"),
        )
        for _ in range(100):  # the bridge's follower reads it within a fetch or two
            if (await client.get("/models/m/labels")).status_code == 200:
                break
            await asyncio.sleep(0.1)
        await assert_every_route_answers(client)
