"""Background loops that raise: logged once, counted, liveness false.

The in-process worker runs on the suite's real broker; the failure is made
through a seam (the lag loop's metric refresh raises), never by waiting on
a race.
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition

from consumer.lag import LagReporter
from consumer.metrics import WorkerMetrics
from consumer.offsets import OffsetTracker
from consumer.protocol import Topics
from consumer.registry import ModelRegistry
from consumer.settings import ConsumerSettings
from consumer.supervision import Supervisor
from consumer.worker import Worker
from deploy.local.processes import free_port
from tests.support.workers import unique_prefix, wait_for


def probe(port: int, path: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


@pytest.mark.asyncio
async def test_a_supervised_task_that_raises_is_logged_once_counted_and_unhealthy(
    caplog: pytest.LogCaptureFixture,
) -> None:
    supervisor = Supervisor()

    async def broken() -> None:
        raise RuntimeError("boom")

    async def fine() -> None:
        await asyncio.sleep(3600)

    supervisor.start("fine", fine)
    with caplog.at_level(logging.ERROR, logger="consumer.supervision"):
        await asyncio.wait_for(supervisor.start("broken", broken), 5)
    assert not supervisor.healthy and supervisor.failed == {"broken": "RuntimeError('boom')"}
    assert supervisor.failures.labels("broken")._value.get() == 1
    (record,) = [r for r in caplog.records if r.getMessage().startswith("background task failed")]
    assert record.exc_info is not None  # with its stack
    await supervisor.stop()  # cancels the healthy one


class _MovingAssignment:
    """A consumer whose partition is revoked while `position` is awaited, with
    aiokafka's own assertion in `highwater`."""

    def __init__(self) -> None:
        self.assigned = {TopicPartition("p.requests.m", 0), TopicPartition("p.requests.m", 1)}

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    def highwater(self, tp: TopicPartition) -> int:
        assert tp in self.assigned, "Partition is not assigned"
        return 10

    async def position(self, tp: TopicPartition) -> int:
        self.assigned.clear()  # a rebalance during the await
        return 4


@pytest.mark.asyncio
async def test_lag_survives_a_partition_revoked_during_its_awaits(tmp_path: Path) -> None:
    settings = ConsumerSettings(bootstrap="x:1", repository=tmp_path, topic_prefix="p")
    reporter = LagReporter(
        _MovingAssignment(),  # type: ignore[arg-type]
        Topics("p"),
        ModelRegistry.from_settings(settings),
        WorkerMetrics(),
        OffsetTracker(),
        lambda: 0,
    )
    assert await reporter.lag() == {"m": 6}  # the first partition; the revoked one skipped


@pytest.mark.kafka
@pytest.mark.asyncio
async def test_a_worker_loop_that_raises_turns_liveness_false(
    kafka_bootstrap: str, model_repository: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    settings = ConsumerSettings(
        bootstrap=kafka_bootstrap,
        repository=model_repository,
        models="shapes_tf2",
        simulate_batch_ms=1,  # no TensorFlow: the loops are under test, not the model
        topic_prefix=unique_prefix(),
        group=unique_prefix(),
        metrics_host="127.0.0.1",
        metrics_port=port,
        poll_interval_s=0,
    )
    worker = Worker(settings)
    running = asyncio.create_task(worker.run())
    try:
        await wait_for(lambda: worker.joined or running.done(), timeout_s=120)
        assert not running.done()
        assert (await asyncio.to_thread(probe, port, "/health/live"))[0] == 200

        def broken(lag: dict[str, int]) -> None:
            raise RuntimeError("metrics backend gone")

        monkeypatch.setattr(worker.lag, "refresh", broken)
        # One probe period (Kubernetes' default is 10 s); the lag loop turns every 2 s.
        await wait_for(lambda: not worker.supervisor.healthy, timeout_s=10)
        status, body = await asyncio.to_thread(probe, port, "/health/live")
        assert status == 503 and "lag" in body["failed_tasks"], body
        metrics = await asyncio.to_thread(
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
        )
        assert 'tfstream_task_failures_total{task="lag"} 1.0' in metrics
        assert not running.done()  # the worker keeps answering; the orchestrator decides
    finally:
        worker.stopping.set()
        await asyncio.wait_for(running, 60)
