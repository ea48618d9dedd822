"""The Kafka-mode bridge's background readers are supervised, and its start can be
undone half-way: against a real broker, with a seam that makes a reader raise.

- The reply reader dies: the failure is logged once and counted, liveness turns
  false, and the call waiting for an answer fails at once with a retryable 503
  (before, it waited out its whole timeout for an answer nobody would read).
- The directory follower dies: the same, and calls answer 503 instead of answering
  from announcements that no longer change.
- `stop` during a start that never finished stops the reply client it started.
- A second answer to one HTTP call is dropped and counted on the bridge's /metrics
  (test_day_two asserts that count is 0 on the HTTP path).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from prometheus_client.parser import text_string_to_metric_families

from consumer.protocol import (
    Announcement,
    ModelFacts,
    ModelState,
    Reply,
    Timing,
    Topics,
    announcement_key,
    detection_data,
)
from http_bridge.app import create_app
from http_bridge.kafka_backend import KafkaBackend
from http_bridge.settings import BridgeSettings
from tests.support.workers import create_topic, raw_producer, read_topic, unique_prefix, wait_for

pytestmark = [pytest.mark.kafka]

IMAGE = {"input_data": ("a.jpg", b"not even an image: nobody answers", "image/jpeg")}


class Seam(RuntimeError):
    """What the test makes a reader raise."""


@asynccontextmanager
async def bridge(bootstrap: str, prefix: str) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    # A timeout no assertion could wait out: a call that waits for it has hung.
    settings = BridgeSettings(bootstrap=bootstrap, topic_prefix=prefix, answer_timeout_s=3600)
    await create_topic(bootstrap, Topics(prefix).models)  # as the first worker would have
    app = create_app(settings)
    await app.state.backend.start()
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bridge") as client:
            for _ in range(600):  # connected: it answers from announcements
                if (await client.get("/models")).status_code == 200:
                    break
                await asyncio.sleep(0.1)
            yield client, app
    finally:
        await app.state.backend.stop()
        await app.state.supervisor.stop()


async def metric(client: httpx.AsyncClient, name: str, **labels: str) -> float | None:
    """One sample of the bridge's /metrics, as Prometheus reads it."""
    metrics = (await client.get("/metrics")).text
    for family in text_string_to_metric_families(metrics):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return None


async def failures(client: httpx.AsyncClient, task: str) -> float | None:
    return await metric(client, "tfstream_task_failures_total", task=task)


async def assert_dead(client: httpx.AsyncClient, app: Any, task: str, caplog: Any) -> None:
    await wait_for(lambda: task in app.state.supervisor.failed, 30)
    live = await client.get("/health/live")
    assert live.status_code == 503 and task in live.json()["failed_tasks"]
    assert "Seam" in live.json()["failed_tasks"][task]
    assert await failures(client, task) == 1.0
    logged = [r for r in caplog.records if r.getMessage().startswith("background task failed")]
    assert [getattr(r, "task", None) for r in logged] == [task]  # once, with its stack
    assert logged[0].exc_info is not None and isinstance(logged[0].exc_info[1], Seam)
    ready = await client.get("/health/ready")
    assert ready.status_code == 503 and ready.json()["stopped_reading"]
    # Every later call answers at once, retryable, and says why.
    later = await asyncio.wait_for(client.post("/models/m/predict", files=IMAGE), 30)
    assert later.status_code == 503 and later.json()["code"] == "service_unavailable"
    assert "stopped reading" in later.json()["error"] and later.headers["Retry-After"] == "5"


@pytest.mark.asyncio
async def test_a_reply_reader_that_raises_fails_the_waiting_call_and_liveness(
    kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    prefix = unique_prefix()
    topics = Topics(prefix)
    await create_topic(kafka_bootstrap, topics.requests("m"))  # expected: the call waits
    caplog.set_level(logging.ERROR, logger="consumer.supervision")
    async with bridge(kafka_bootstrap, prefix) as (client, app):
        backend: KafkaBackend = app.state.backend

        def resolve(value: bytes | None) -> None:
            raise Seam("the reply reader met something it did not expect")

        monkeypatch.setattr(backend.client, "_resolve", resolve)
        waiting = asyncio.create_task(client.post("/models/m/predict", files=IMAGE))
        requests = await read_topic(kafka_bootstrap, topics.requests("m"), 1, 60)
        assert not waiting.done(), waiting.result().text
        (request,) = requests
        reply_to = dict(request.headers)["reply-to"].decode()
        async with raw_producer(kafka_bootstrap) as producer:  # any record: the reader raises
            await producer.send_and_wait(reply_to, b"{}")
        answered = await asyncio.wait_for(waiting, 30)  # not the hour of its timeout
        assert answered.status_code == 503, answered.text
        assert answered.json()["code"] == "service_unavailable"
        assert answered.json()["error"].startswith("the reply reader stopped (Seam)")
        await assert_dead(client, app, "replies", caplog)


@pytest.mark.asyncio
async def test_a_directory_follower_that_raises_turns_liveness_false_and_calls_503(
    kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    prefix = unique_prefix()
    topics = Topics(prefix)
    caplog.set_level(logging.ERROR, logger="consumer.supervision")
    facts = ModelFacts("m", "h", ModelState.READY, version=1)
    async with bridge(kafka_bootstrap, prefix) as (client, app):
        backend: KafkaBackend = app.state.backend
        assert (await client.get("/models")).json()["data"]["models"] == []

        def apply(key: bytes | None, value: bytes | None) -> None:
            raise Seam("the follower met something it did not expect")

        monkeypatch.setattr(backend.directory, "_apply", apply)
        async with raw_producer(kafka_bootstrap) as producer:
            announcement = Announcement(facts, worker="w1")
            await producer.send_and_wait(
                topics.models, announcement.to_json(), key=announcement_key("m", "w1")
            )
        await assert_dead(client, app, "directory", caplog)
        # Not a list read from announcements that stopped changing.
        listed = await client.get("/models")
        assert listed.status_code == 503 and listed.json()["code"] == "service_unavailable"


@pytest.mark.asyncio
async def test_stop_during_a_start_that_never_finished_stops_the_reply_client(
    kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = BridgeSettings(bootstrap=kafka_bootstrap, topic_prefix=unique_prefix())
    backend = KafkaBackend(settings)
    reading = asyncio.Event()

    async def announcements_never_come(timeout_s: float = 10.0) -> None:
        reading.set()
        await asyncio.Event().wait()  # as a broker that never lets the bridge catch up

    monkeypatch.setattr(backend.directory, "start", announcements_never_come)
    starting = asyncio.create_task(backend.start())
    await asyncio.wait_for(reading.wait(), 60)  # the reply client is up by now
    reader = backend.client.reader
    assert reader is not None and not reader.done()
    assert await topic_exists(kafka_bootstrap, backend.client.reply_topic)
    await asyncio.wait_for(backend.stop(), 30)
    starting.cancel()
    assert reader.cancelled()
    assert backend.client._started == []  # its producer and consumer stopped
    assert await topic_deleted(kafka_bootstrap, backend.client.reply_topic)


async def topic_exists(bootstrap: str, topic: str) -> bool:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return topic in await admin.list_topics()
    finally:
        await admin.close()


async def topic_deleted(bootstrap: str, topic: str) -> bool:
    for _ in range(50):  # a deletion takes a moment to show in the metadata
        if not await topic_exists(bootstrap, topic):
            return True
        await asyncio.sleep(0.1)
    return False


@pytest.mark.asyncio
async def test_a_second_answer_to_an_http_call_is_dropped_and_counted(
    kafka_bootstrap: str,
) -> None:
    prefix = unique_prefix()
    topics = Topics(prefix)
    await create_topic(kafka_bootstrap, topics.requests("m"))
    async with bridge(kafka_bootstrap, prefix) as (client, _):
        assert await metric(client, "tfstream_bridge_replies_total", outcome="duplicate") == 0
        call = asyncio.create_task(client.post("/models/m/predict", files=IMAGE))
        (request,) = await read_topic(kafka_bootstrap, topics.requests("m"), 1, 60)
        sent = dict(request.headers)
        replies = [
            Reply(
                sent["correlation-id"].decode(),
                "m",
                data=detection_data([], None, 1, 1),
                timing=Timing(batch_size=1),
                worker=worker,
            )
            for worker in ("first", "second")  # at-least-once: a worker died after answering
        ]
        async with raw_producer(kafka_bootstrap) as producer:
            for reply in replies:
                await producer.send_and_wait(
                    sent["reply-to"].decode(), reply.to_json(), headers=reply.headers()
                )
        answered = await asyncio.wait_for(call, 30)
        assert answered.status_code == 200 and answered.json()["data"]["bounding-boxes"] == []
        for _ in range(300):
            if await metric(client, "tfstream_bridge_replies_total", outcome="duplicate") == 1:
                break
            await asyncio.sleep(0.1)
        assert await metric(client, "tfstream_bridge_replies_total", outcome="duplicate") == 1
        assert await metric(client, "tfstream_bridge_replies_total", outcome="answered") == 1
        assert await metric(client, "tfstream_bridge_requests_sent_total") == 1
        assert await metric(client, "tfstream_bridge_replies_timed_out_total") == 0
