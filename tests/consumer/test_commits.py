"""Commits and the worker's shutdown steps without a broker: the final commit meets
a rebalance, a log topic the ACLs refuse, announcements after the goodbye.

The consumer and producer here are stand-ins for the two calls used; the same
steps on a real broker: tests/consumer/test_delivery_kafka.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError

from consumer import commits, kafka_io
from consumer.announcements import Announcer
from consumer.commits import Commits
from consumer.metrics import WorkerMetrics
from consumer.offsets import OffsetTracker
from consumer.protocol import ModelState, Topics
from consumer.registry import ModelRegistry
from consumer.settings import ConsumerSettings
from consumer.worker_topics import WorkerTopics
from engines.errors import NotAuthorized, ReplyUndeliverable
from tests.consumer.fakes import write_fake_model

TP = TopicPartition("t.requests.a", 0)


class RebalancingConsumer:
    """`commit` refuses `refusals` times, as aiokafka does while the group rebalances."""

    def __init__(self, refusals: int) -> None:
        self.refusals = refusals
        self.committed: list[dict[Any, int]] = []

    async def commit(self, points: dict[Any, int]) -> None:
        if self.refusals:
            self.refusals -= 1
            raise CommitFailedError("the group is rebalancing")
        self.committed.append(dict(points))


@pytest.mark.asyncio
async def test_the_final_commit_is_tried_again_once_after_a_rebalance_refused_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(commits, "FINAL_RETRY_S", 0.001)
    offsets = OffsetTracker()
    offsets.track(TP, 7)
    offsets.finish(TP, 7)
    done = Commits(offsets, 200)
    consumer = RebalancingConsumer(refusals=1)
    done.consumer = consumer  # type: ignore[assignment]
    await done.final()
    assert consumer.committed == [{TP: 8}]
    assert offsets.commit_points() == {}  # nothing left to commit


@pytest.mark.asyncio
async def test_a_log_topic_the_acls_refuse_to_create_is_an_undeliverable_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NotAuthorized is no KafkaError: it must not escape the log topic's creation as
    an error the sink cannot tell from a bug; the sink retries an undeliverable record."""

    async def refused(*_: object, **__: object) -> None:
        raise NotAuthorized("not authorized: Create on topic 't.answers.new'")

    monkeypatch.setattr(kafka_io, "ensure_topics", refused)
    worker = WorkerTopics(ConsumerSettings(bootstrap="x:1", repository=tmp_path, topic_prefix="t"))
    with pytest.raises(ReplyUndeliverable, match="not authorized"):
        await worker.ensure_log("t.answers.new")


class Producer:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    async def send_and_wait(self, topic: str, value: bytes, key: bytes) -> None:
        self.sent.append(value)


@pytest.mark.asyncio
async def test_nothing_but_stopped_is_announced_after_the_goodbye(tmp_path: Path) -> None:
    write_fake_model(tmp_path, "a")
    settings = ConsumerSettings(bootstrap="x:1", repository=tmp_path)
    registry = ModelRegistry.from_settings(settings)
    (loading,) = registry.announce_loading()
    announcer = Announcer(registry, WorkerMetrics(), Topics("t"), "w1", 30_000, 90_000)
    producer = Producer()
    announcer.producer = producer  # type: ignore[assignment]
    await announcer.announce(loading)
    await announcer.stopped()
    await announcer.announce(loading)  # a loop or a reload finishing late
    await announcer.every(registry.entries())
    states = [json.loads(v)["state"] for v in producer.sent]
    assert states == ["loading", ModelState.STOPPED.value]
    assert json.loads(producer.sent[-1])["forget_ms"] == 90_000


@pytest.mark.asyncio
async def test_assigned_partitions_are_placed_even_when_the_broker_refuses_at_first() -> None:
    """A shadow places its partitions in the listener; aiokafka only logs what a
    listener raises, so one refusal (a coordinator still loading) would leave them
    unplaced and the shadow not ready until its next rebalance."""
    from aiokafka.errors import CoordinatorLoadInProgressError

    from consumer.rebalance import Rebalance
    from engines.errors import ServiceUnavailable

    attempts: list[set[TopicPartition]] = []
    placed: list[set[TopicPartition]] = []

    async def place(assigned: set[TopicPartition]) -> None:
        attempts.append(assigned)
        if len(attempts) == 1:
            raise CoordinatorLoadInProgressError()
        if len(attempts) == 2:  # kafka_io.seek_to_time's bound: offsets not known in time
            raise ServiceUnavailable("the offsets of t were not known within 15s")
        placed.append(assigned)

    listener = Rebalance(Commits(OffsetTracker(), 1000), 1.0, place)
    await listener.on_partitions_assigned({TP})
    assert len(attempts) == 3 and placed == [{TP}]
