"""Background loops that raise: logged once, counted, liveness false; pipeline
runners restarted within a limit, then failed the same way.

The in-process worker runs on the suite's real broker; the failure is made
through a seam (the lag loop's metric refresh raises; the registry's engines
die in the runner), never by waiting on a race.
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
from consumer.supervision import Restarts, Supervisor
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


@pytest.mark.asyncio
async def test_a_guarded_task_is_restarted_within_its_intensity_then_failed() -> None:
    supervisor = Supervisor()
    runs: list[int] = []
    crashes: list[str] = []

    async def dies() -> None:
        runs.append(len(runs))
        raise RuntimeError(f"death {len(runs)}")

    ended = await asyncio.wait_for(
        supervisor.guard(
            "t", dies, Restarts(limit=2, period_s=60), lambda e: crashes.append(str(e))
        ),
        5,
    )
    assert not ended and len(runs) == 3  # started, restarted twice, then failed
    assert crashes == ["death 1", "death 2", "death 3"]  # each death answered what it held
    assert supervisor.failed == {"t": "RuntimeError('death 3')"}
    assert supervisor.failures.labels("t")._value.get() == 3

    finished = Supervisor()
    assert await finished.guard("u", lambda: asyncio.sleep(0), Restarts()) and finished.healthy


@pytest.mark.asyncio
async def test_the_embedded_bridges_runners_report_to_its_supervisor(tmp_path: Path) -> None:
    """The process's supervisor (the one /health/live reads) hears of a runner that
    keeps dying; the engine comes from the registry's factory, the seam."""
    from consumer.metrics import WorkerMetrics
    from consumer.pipeline import RUNNER_RESTARTS
    from consumer.registry import ModelRegistry
    from engines import errors
    from engines.repository import ModelRepository
    from http_bridge.backends import DetectCall
    from http_bridge.embedded import EmbeddedBackend
    from http_bridge.settings import BridgeSettings
    from tests.consumer.fakes import DyingEngine, jpeg, write_fake_model

    write_fake_model(tmp_path, "m")
    settings = BridgeSettings(repository=tmp_path, poll_interval_s=0, answer_timeout_s=10)
    registry = ModelRegistry(
        ModelRepository(tmp_path), None, "cpu", lambda s, d: DyingEngine(99, spared=1)
    )
    supervisor = Supervisor()
    backend = EmbeddedBackend(settings, WorkerMetrics(), supervisor, registry=registry)
    await backend.start()
    try:
        codes = []
        for _ in range(RUNNER_RESTARTS.limit + 2):
            with pytest.raises(errors.TfstreamError) as raised:
                await backend.detect(DetectCall("m", jpeg(32, 24)))
            codes.append(raised.value.code)
    finally:
        await asyncio.wait_for(backend.stop(), 10)
    assert codes == ["inference_failed"] * (RUNNER_RESTARTS.limit + 1) + ["model_unavailable"]
    assert not supervisor.healthy and list(supervisor.failed) == ["pipeline-m-0"]


@pytest.mark.kafka
@pytest.mark.asyncio
async def test_a_worker_whose_runner_keeps_dying_answers_everything_and_turns_liveness_false(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """The worker's registry (a public attribute) gets engines that die in the runner:
    every request is answered with a typed error, none lost, and /health/live is 503."""
    from consumer.pipeline import RUNNER_RESTARTS
    from consumer.registry import ModelRegistry
    from engines.repository import ModelRepository
    from tests.consumer.fakes import DyingEngine, jpeg, write_fake_model
    from tests.support.workers import (
        create_topic,
        headers,
        raw_producer,
        read_topic,
        replies_by_id,
    )

    write_fake_model(tmp_path, "m")
    port = free_port()
    prefix = unique_prefix()
    settings = ConsumerSettings(
        bootstrap=kafka_bootstrap,
        repository=tmp_path,
        models="m",
        topic_prefix=prefix,
        group=unique_prefix(),
        metrics_host="127.0.0.1",
        metrics_port=port,
        poll_interval_s=0,
        max_batch=1,
        instances=1,
    )
    worker = Worker(settings)
    worker.registry = ModelRegistry(
        ModelRepository(tmp_path), ["m"], "cpu", lambda spec, device: DyingEngine(99, spared=1)
    )
    running = asyncio.create_task(worker.run())
    try:
        await wait_for(lambda: worker.joined or running.done(), timeout_s=120)
        assert not running.done()
        reply_to = f"{prefix}.replies.test"
        await create_topic(kafka_bootstrap, reply_to)
        async with raw_producer(kafka_bootstrap) as producer:
            for i in range(6):
                await producer.send(
                    f"{prefix}.requests.m",
                    jpeg(32, 24),
                    headers=headers(correlation_id=str(i), reply_to=reply_to),
                )
            await producer.flush()
        records = await read_topic(kafka_bootstrap, reply_to, expect=6, timeout_s=60)
        replies = replies_by_id(records)
        assert sorted(replies) == [str(i) for i in range(6)]  # every request, once
        assert all(len(bodies) == 1 for bodies in replies.values())
        codes = sorted(bodies[0]["error"]["code"] for bodies in replies.values())
        died = RUNNER_RESTARTS.limit + 1
        assert codes == ["inference_failed"] * died + ["model_unavailable"] * (6 - died)
        status, body = await asyncio.to_thread(probe, port, "/health/live")
        assert status == 503 and "pipeline-m-0" in body["failed_tasks"], body
        metrics = await asyncio.to_thread(
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
        )
        assert f'tfstream_task_failures_total{{task="pipeline-m-0"}} {died}.0' in metrics
    finally:
        worker.stopping.set()
        await asyncio.wait_for(running, 60)
