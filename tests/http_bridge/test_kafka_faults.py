"""The bridge over real Kafka when things go wrong, and under concurrency."""

from __future__ import annotations

import asyncio
import re
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from deploy.local.kafka import LocalKafkaCluster
from deploy.local.processes import ConsumerProcess
from tests.support.bridge import BridgeProcess
from tests.support.bridge import predict as served_predict
from tests.support.models import match_truth
from tests.support.workers import unique_prefix

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

Truth = dict[str, list[dict[str, Any]]]


def start_pair(
    bootstrap: str,
    repository: Path,
    logs: Path,
    worker_env: dict[str, str] | None = None,
    bridge_env: dict[str, str] | None = None,
) -> tuple[ConsumerProcess, BridgeProcess]:
    prefix = unique_prefix()
    worker = ConsumerProcess(
        bootstrap,
        repository,
        prefix,
        logs,
        extra={"TFSTREAM_MODELS": "shapes_tf1", **(worker_env or {})},
    ).start()
    worker.wait_ready()
    bridge = BridgeProcess(
        logs,
        {"TFSTREAM_BOOTSTRAP": bootstrap, "TFSTREAM_TOPIC_PREFIX": prefix, **(bridge_env or {})},
    ).start()
    bridge.wait_ready()
    return worker, bridge


def predict(bridge: BridgeProcess, name: str, data: bytes, timeout_s: float = 60) -> httpx.Response:
    return served_predict(bridge, "shapes_tf1", data, filename=name, timeout_s=timeout_s)


def test_32_concurrent_calls_get_their_own_answers_in_batches(
    kafka_bootstrap: str,
    serving_repository: Path,
    shapes_images: tuple[Path, Truth],
    tmp_path: Path,
) -> None:
    folder, truth = shapes_images
    names = [n for n in sorted(truth) if n.endswith(".jpg")][:32]
    worker, bridge = start_pair(
        kafka_bootstrap, serving_repository, tmp_path, worker_env={"TFSTREAM_MAX_DELAY_MS": "20"}
    )
    try:

        async def all_at_once() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=bridge.url, timeout=120) as client:
                return await asyncio.gather(
                    *(
                        client.post(
                            "/models/shapes_tf1/predict",
                            files={"input_data": (n, (folder / n).read_bytes())},
                        )
                        for n in names
                    )
                )

        responses = asyncio.run(all_at_once())
        wrong = {}
        for name, r in zip(names, responses, strict=True):
            assert r.status_code == 200, r.text
            problems = match_truth(r.json()["data"]["bounding-boxes"], truth[name])
            if problems:
                wrong[name] = problems
        assert wrong == {}
        metrics = worker.metrics()
        singles = float(
            re.search(r'tfstream_batch_size_bucket\{le="1.0",model="shapes_tf1"\} (\S+)', metrics)[
                1
            ]
        )
        batches = float(
            re.search(r'tfstream_batch_size_count\{model="shapes_tf1"\} (\S+)', metrics)[1]
        )
        assert batches < 32 and singles < batches, (
            metrics
        )  # some engine calls held several requests
    finally:
        bridge.stop()
        worker.stop()


def test_with_no_live_consumer_a_request_waits_its_timeout_then_503_retry_after(
    kafka_bootstrap: str,
    serving_repository: Path,
    shapes_images: tuple[Path, Truth],
    tmp_path: Path,
) -> None:
    """The waiting rule: a model a worker announced waits in Kafka for the next worker
    (a rolling update), up to the request timeout; a model nobody announced is 404."""
    folder, truth = shapes_images
    name = next(n for n in sorted(truth) if truth[n])
    worker, bridge = start_pair(
        kafka_bootstrap,
        serving_repository,
        tmp_path,
        worker_env={"TFSTREAM_ANNOUNCE_TTL_MS": "3000"},
        bridge_env={"TFSTREAM_ANSWER_TIMEOUT_S": "3"},
    )
    try:
        assert predict(bridge, name, (folder / name).read_bytes()).status_code == 200
        worker.proc.kill()  # type: ignore[union-attr]  # no goodbye: its announcement just ages
        worker.proc.wait()  # type: ignore[union-attr]
        # The bridge drops the dead worker's announcement once its 3 s TTL has passed.
        deadline = time.monotonic() + 30
        while httpx.get(f"{bridge.url}/health/ready").status_code != 503:
            assert time.monotonic() < deadline, "the dead worker's announcement never expired"
            time.sleep(0.2)
        started = time.monotonic()
        r = predict(bridge, name, (folder / name).read_bytes())
        assert 2.9 <= time.monotonic() - started < 6.0
        assert r.status_code == 503 and r.json()["code"] == "model_unavailable", r.text
        assert r.headers["Retry-After"]
        ready = httpx.get(f"{bridge.url}/health/ready")
        assert ready.status_code == 503
        started = time.monotonic()
        unknown = httpx.post(
            f"{bridge.url}/models/never_announced/predict",
            files={"input_data": (name, (folder / name).read_bytes(), "image/jpeg")},
            timeout=30,
        )
        assert unknown.status_code == 404 and time.monotonic() - started < 2.0, unknown.text
    finally:
        bridge.stop()
        worker.stop()


def test_a_consumer_stopped_mid_request_gives_504_within_the_timeout(
    kafka_bootstrap: str,
    serving_repository: Path,
    shapes_images: tuple[Path, Truth],
    tmp_path: Path,
) -> None:
    folder, truth = shapes_images
    name = next(n for n in sorted(truth) if truth[n])
    worker, bridge = start_pair(
        kafka_bootstrap,
        serving_repository,
        tmp_path,
        bridge_env={"TFSTREAM_ANSWER_TIMEOUT_S": "3"},
    )
    try:
        assert predict(bridge, name, (folder / name).read_bytes()).status_code == 200
        worker.signal(
            signal.SIGSTOP
        )  # frozen: alive to Kafka's eyes for a while, answering nothing
        started = time.monotonic()
        r = predict(bridge, name, (folder / name).read_bytes())
        elapsed = time.monotonic() - started
        assert r.status_code == 504 and r.json()["code"] == "timeout", r.text
        assert 2.9 <= elapsed < 6.0
        worker.signal(signal.SIGCONT)
        assert (
            predict(bridge, name, (folder / name).read_bytes()).status_code == 200
        )  # serving again
    finally:
        worker.signal(signal.SIGCONT)
        bridge.stop()
        worker.stop()


def test_broker_stopped_and_restarted(
    serving_repository: Path, shapes_images: tuple[Path, Truth], tmp_path: Path
) -> None:
    folder, truth = shapes_images
    name = next(n for n in sorted(truth) if truth[n])
    data = (folder / name).read_bytes()
    with LocalKafkaCluster(brokers=1, workdir=tmp_path / "kafka") as cluster:
        worker, bridge = start_pair(
            cluster.bootstrap,
            serving_repository,
            tmp_path,
            bridge_env={"TFSTREAM_SEND_TIMEOUT_S": "2", "TFSTREAM_ANSWER_TIMEOUT_S": "10"},
        )
        pid = bridge.proc.pid  # type: ignore[union-attr]
        try:
            assert predict(bridge, name, data).status_code == 200
            cluster.stop_broker(0)
            r = predict(bridge, name, data)
            assert r.status_code == 503 and r.json()["code"] == "service_unavailable", r.text
            assert httpx.get(f"{bridge.url}/health/ready", timeout=10).status_code == 503
            cluster.start_broker(0)
            deadline = time.monotonic() + 90
            status = None
            while time.monotonic() < deadline:
                r = predict(bridge, name, data, timeout_s=30)
                status = r.status_code
                if status == 200:
                    break
                time.sleep(1)
            assert status == 200, r.text
            assert match_truth(r.json()["data"]["bounding-boxes"], truth[name]) == []
            assert bridge.proc.pid == pid and bridge.proc.poll() is None  # type: ignore[union-attr]
        finally:
            bridge.stop()
            worker.stop()
