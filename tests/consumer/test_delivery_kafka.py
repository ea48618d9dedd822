"""Delivery failures, shutdown order and forgotten workers, on the suite's real broker
with worker processes.

Failures are made the way an operator meets them: a topic whose
`max.message.bytes` is too small for what the worker writes there (the answer
log, the DLQ), then raised again with an admin call, as one would fix it.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from consumer.settings import KafkaClientSettings
from deploy.local.processes import ConsumerProcess
from engines.errors import ModelNotFound, ModelUnavailable
from producer_tools.directory import ModelDirectory
from tests.consumer.fakes import IMAGE
from tests.support.workers import (
    create_topic,
    headers,
    raw_producer,
    read_to_end,
    read_topic,
    unique_prefix,
    wait_for,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

MODEL = "shapes_tf2"


def worker(
    bootstrap: str, repository: Path, prefix: str, logs: Path, **env: str
) -> ConsumerProcess:
    return ConsumerProcess(
        bootstrap,
        repository,
        prefix,
        logs,
        group=f"g-{uuid.uuid4().hex[:8]}",
        extra={
            "TFSTREAM_MODELS": MODEL,
            "TFSTREAM_SIMULATE_BATCH_MS": "1",  # the delivery is under test, not the model
            "TFSTREAM_PARTITIONS": "1",
            "TFSTREAM_POLL_INTERVAL_S": "0",
            **env,
        },
    )


async def admin_call(bootstrap: str, call: Any) -> Any:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return await call(admin)
    finally:
        await admin.close()


async def small_topic(bootstrap: str, name: str, max_bytes: int) -> None:
    """A topic that refuses any record over `max_bytes`, made before the worker (which
    leaves existing topics as they are)."""
    await admin_call(
        bootstrap,
        lambda a: a.create_topics(
            [NewTopic(name, 1, 1, topic_configs={"max.message.bytes": str(max_bytes)})]
        ),
    )


async def committed(bootstrap: str, group: str, topic: str) -> int:
    offsets = await admin_call(bootstrap, lambda a: a.list_consumer_group_offsets(group))
    meta = offsets.get(TopicPartition(topic, 0))
    return -1 if meta is None else int(meta.offset)


async def send(bootstrap: str, topic: str, value: bytes, **head: str) -> None:
    async with raw_producer(bootstrap) as producer:
        await producer.send_and_wait(topic, value, key=b"cam-1", headers=headers(**head))


def metric(proc: ConsumerProcess, line_start: str) -> float:
    for line in proc.metrics().splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def commits_reach(bootstrap: str, proc: ConsumerProcess, topic: str, offset: int) -> None:
    deadline = time.monotonic() + 60
    while await committed(bootstrap, proc.group, topic) != offset:
        assert time.monotonic() < deadline, proc.log_tail()
        await asyncio.sleep(0.3)


@pytest.mark.asyncio
async def test_a_request_is_committed_only_once_its_answer_log_record_is_written(
    kafka_bootstrap: str, model_repository: Path, tmp_path: Path
) -> None:
    """Point 2: while the answer-log topic refuses the record, the request is answered
    but not committed, the worker is not ready (naming the log topic) and counts the
    failures; once the operator fixes the topic, the record is written and committed."""
    prefix = unique_prefix()
    answers, requests = f"{prefix}.answers.{MODEL}", f"{prefix}.requests.{MODEL}"
    await small_topic(kafka_bootstrap, answers, 300)  # a logged answer is larger
    proc = worker(
        kafka_bootstrap, model_repository, prefix, tmp_path, TFSTREAM_ANSWER_LOG="true"
    ).start()
    try:
        proc.wait_ready()
        replies = f"{prefix}.replies.me"
        await create_topic(kafka_bootstrap, replies)
        await send(kafka_bootstrap, requests, IMAGE, correlation_id="c0", reply_to=replies)
        await read_topic(kafka_bootstrap, replies, expect=1, timeout_s=60)  # answered...
        await wait_for(lambda: proc.health()[0] == 503, timeout_s=30)
        _, body = proc.health()
        assert any(answers in what for what in body["problems"]), body
        assert metric(proc, "tfstream_answers_not_logged_total") >= 1
        await asyncio.sleep(1.0)  # several commit intervals
        assert await committed(kafka_bootstrap, proc.group, requests) <= 0  # ...not committed

        # The operator raises the limit: the held record is written, the request committed.
        resource = ConfigResource(
            ConfigResourceType.TOPIC, answers, configs={"max.message.bytes": "1048576"}
        )
        await admin_call(kafka_bootstrap, lambda a: a.alter_configs([resource]))
        await wait_for(lambda: proc.health()[0] == 200, timeout_s=60)
        await commits_reach(kafka_bootstrap, proc, requests, 1)
        logged = await read_to_end(kafka_bootstrap, answers)
        assert [json.loads(r.value)["correlation_id"] for r in logged] == ["c0"]
    finally:
        proc.stop()


@pytest.mark.asyncio
async def test_a_request_the_dlq_refuses_does_not_freeze_its_partition(
    kafka_bootstrap: str, model_repository: Path, tmp_path: Path
) -> None:
    """Point 1: a bad image is answered with an error and dead-lettered, but the DLQ
    refuses it (larger than its max.message.bytes): the partition's commits still move
    past it and the request after it, and the worker says why it is not ready."""
    prefix = unique_prefix()
    requests = f"{prefix}.requests.{MODEL}"
    await small_topic(kafka_bootstrap, f"{prefix}.dlq", 2_000)
    proc = worker(kafka_bootstrap, model_repository, prefix, tmp_path).start()
    try:
        proc.wait_ready()
        replies = f"{prefix}.replies.me"
        await create_topic(kafka_bootstrap, replies)
        await send(kafka_bootstrap, requests, b"x" * 5_000, correlation_id="bad", reply_to=replies)
        await send(kafka_bootstrap, requests, IMAGE, correlation_id="c1", reply_to=replies)
        answered = await read_topic(kafka_bootstrap, replies, expect=2, timeout_s=60)
        codes = {
            json.loads(r.value)["correlation_id"]: json.loads(r.value)["error"] for r in answered
        }
        assert codes["bad"]["code"] == "invalid_image" and codes["c1"] is None
        await commits_reach(kafka_bootstrap, proc, requests, 2)
        status, body = proc.health()
        assert status == 503 and "dead letter refused" in body["problems"], body
        assert f"{requests}:0@0" in body["problems"]["dead letter refused"]
        assert metric(proc, "tfstream_answers_dropped_total") == 1
    finally:
        proc.stop()


@pytest.mark.asyncio
async def test_shutdown_says_stopped_last_and_exits_cleanly(
    kafka_bootstrap: str, model_repository: Path, tmp_path: Path
) -> None:
    """Point 9: with re-announcements every 10 ms, the last record of the worker's key
    is still `stopped` (the announce loop is cancelled before the goodbye; before, it
    went on while the worker left its group, and said `ready` again)."""
    prefix = unique_prefix()
    proc = worker(
        kafka_bootstrap,
        model_repository,
        prefix,
        tmp_path,
        TFSTREAM_ANNOUNCE_TTL_MS="30",
        TFSTREAM_ANNOUNCE_FORGET_MS="60000",
    ).start()
    proc.wait_ready()
    await asyncio.sleep(0.5)
    proc.signal(signal.SIGTERM)
    assert await asyncio.to_thread(proc.wait, 60) == 0, proc.log_tail()
    await asyncio.sleep(1.0)  # anything written late would be there by now
    records = await read_to_end(kafka_bootstrap, f"{prefix}.models")
    mine = [json.loads(r.value) for r in records if r.key == f"{MODEL}|w-{proc.name}".encode()]
    assert [m["state"] for m in mine][-1] == "stopped", [m["state"] for m in mine]
    assert "ready" in [m["state"] for m in mine]


@pytest.mark.asyncio
async def test_sigterm_while_waiting_for_the_broker_exits_0_at_once(
    model_repository: Path, tmp_path: Path
) -> None:
    """Point 9: a worker still waiting for its broker has nothing in hand to finish."""
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    proc = worker(dead, model_repository, unique_prefix(), tmp_path).start()
    try:
        await wait_for(lambda: "waiting for Kafka" in proc.log_path.read_text(), timeout_s=60)
        began = time.monotonic()
        proc.signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 10) == 0, proc.log_tail()
        assert time.monotonic() - began < 2.0
    finally:
        proc.stop()


@pytest.mark.asyncio
async def test_a_stopped_worker_is_forgotten_after_announce_forget_ms(
    kafka_bootstrap: str, model_repository: Path, tmp_path: Path
) -> None:
    """Point 8: the models topic is compacted and deleted by time; a bridge's directory
    keeps a stopped model waiting (ModelUnavailable, requests sent) until the
    worker's record is older than --announce-forget-ms, then drops it: 404 again."""
    prefix = unique_prefix()
    forget_ms = 4_000
    proc = worker(
        kafka_bootstrap,
        model_repository,
        prefix,
        tmp_path,
        TFSTREAM_ANNOUNCE_TTL_MS="1000",
        TFSTREAM_ANNOUNCE_FORGET_MS=str(forget_ms),
    ).start()
    directory = ModelDirectory(
        KafkaClientSettings(bootstrap=kafka_bootstrap, topic_prefix=prefix), forget_ms=forget_ms
    )
    try:
        proc.wait_ready()
        await directory.start()
        await wait_for(lambda: MODEL in directory.names(), timeout_s=30)
        described = await admin_call(
            kafka_bootstrap,
            lambda a: a.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, f"{prefix}.models")]
            ),
        )
        configs = {c[0]: c[1] for c in described[0].resources[0][4]}
        assert configs["cleanup.policy"] == "compact,delete"
        assert configs["retention.ms"] == str(forget_ms)
        proc.signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 60) == 0, proc.log_tail()
        stopped_at = time.monotonic()
        await wait_for(lambda: MODEL not in directory.names(), timeout_s=10)
        # Stopped, not forgotten: the waiting rule holds, requests are sent and wait.
        with pytest.raises(ModelUnavailable):
            directory.view(MODEL)
        assert directory.expected(MODEL) and directory.resolve(MODEL) == MODEL
        await wait_for(lambda: not directory.expected(MODEL), timeout_s=forget_ms / 1000 + 10)
        assert time.monotonic() - stopped_at >= forget_ms / 1000 - 1.5
        with pytest.raises(ModelNotFound):
            directory.view(MODEL)
        assert directory._latest == {}  # nothing kept of a worker gone
    finally:
        await directory.stop()
        proc.stop()


@pytest.mark.asyncio
async def test_a_fetch_that_fails_for_good_still_commits_what_was_answered(
    kafka_bootstrap: str, model_repository: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fetch error aiokafka does not retry (an ACL revoked, a corrupt record) ends the
    worker, but as a shutdown does: the answers already given are committed and the
    models said `stopped`, so a restart does not answer them all again. Commits here
    are rare (every 10 min), so only the final commit can have made them."""
    from aiokafka.errors import TopicAuthorizationFailedError

    from consumer.settings import ConsumerSettings
    from consumer.worker import Worker
    from tests.support.workers import replies_by_id

    prefix = unique_prefix()
    settings = ConsumerSettings(
        bootstrap=kafka_bootstrap,
        repository=model_repository,
        models=MODEL,
        simulate_batch_ms=1,  # the shutdown is under test, not the model
        partitions=1,
        topic_prefix=prefix,
        group=unique_prefix(),
        poll_interval_s=0,
        commit_interval_ms=600_000,
    )
    worker = Worker(settings)
    running = asyncio.create_task(worker.run())
    try:
        await wait_for(lambda: worker.joined or running.done(), timeout_s=120)
        assert not running.done()
        requests = f"{prefix}.requests.{MODEL}"
        reply_to = f"{prefix}.replies.test"
        await create_topic(kafka_bootstrap, reply_to)
        for i in range(3):
            await send(kafka_bootstrap, requests, IMAGE, correlation_id=str(i), reply_to=reply_to)
        records = await read_topic(kafka_bootstrap, reply_to, expect=3, timeout_s=60)
        assert sorted(replies_by_id(records)) == ["0", "1", "2"]

        async def refused(*args: Any, **kwargs: Any) -> Any:
            raise TopicAuthorizationFailedError()

        monkeypatch.setattr(worker.consumer, "getmany", refused)
        with pytest.raises(TopicAuthorizationFailedError):
            await asyncio.wait_for(running, 60)
    finally:
        worker.stopping.set()
        if not running.done():
            await asyncio.wait_for(running, 60)
    assert await committed(kafka_bootstrap, settings.consumer_group(), requests) == 3
    said = [json.loads(r.value) for r in await read_to_end(kafka_bootstrap, f"{prefix}.models")]
    assert said[-1]["state"] == "stopped", said
