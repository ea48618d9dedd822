"""A worker's start-up steps after connecting are retried too: a broker (or its name in
DNS) that is away for a moment between connecting and joining the group must not end
the worker. Seen in the compose stack: a third worker lost `kafka`'s DNS name while
reading the camera zones and exited, never ready."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiokafka.errors import KafkaConnectionError

from consumer.tracking_stage import CameraFeed
from deploy.local.processes import free_port
from tests.consumer.fakes import CountingEngine, fake_model_worker
from tests.support.workers import wait_for

pytestmark = pytest.mark.kafka


@pytest.mark.asyncio
async def test_reading_the_zones_is_retried_while_the_broker_is_away(
    kafka_bootstrap: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    attempts: list[CameraFeed] = []
    catch_up_once = CameraFeed._catch_up_once

    async def away_once(feed: CameraFeed) -> None:
        attempts.append(feed)
        if len(attempts) == 1:
            await feed._started()  # a client the next attempt goes on with
            raise KafkaConnectionError("Unable to bootstrap from [('kafka', 19092)]")
        await catch_up_once(feed)

    monkeypatch.setattr(CameraFeed, "_catch_up_once", away_once)
    worker = fake_model_worker(
        kafka_bootstrap,
        tmp_path,
        CountingEngine,
        metrics_host="127.0.0.1",
        metrics_port=free_port(),
    )
    running = asyncio.create_task(worker.run())
    try:
        await wait_for(lambda: worker.joined or running.done(), timeout_s=120)
        assert not running.done(), running.exception()
        assert len(attempts) == 2
        assert attempts[0] is attempts[1] is worker.camera_feed  # one feed, one client
    finally:
        worker.stopping.set()
        await asyncio.wait_for(running, 60)
