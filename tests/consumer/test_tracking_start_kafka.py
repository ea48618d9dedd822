"""Tracking's reads before and after joining, against a real broker: bounded, logged,
never a silent wait for good (a topic missing, the broker away)."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import pytest
from aiokafka import TopicPartition

from consumer.pipeline import Answer
from consumer.protocol import Reply, Topics, detection_data
from consumer.records import Record
from consumer.settings import ConsumerSettings
from consumer.tracking.config import CameraConfig
from consumer.tracking_stage import CameraFeed, TrackedAnswer, TrackingStage
from engines.errors import ServiceUnavailable
from tests.consumer.fakes import MemoryOutbox
from tests.consumer.test_tracking_stage import PartitionOutbox
from tests.support.workers import create_topic, raw_producer, unique_prefix

pytestmark = pytest.mark.kafka


def _stage(bootstrap: str, prefix: str) -> tuple[ConsumerSettings, Topics, TrackingStage]:
    settings = ConsumerSettings(
        bootstrap=bootstrap, topic_prefix=prefix, broker_timeout_ms=1000, start_timeout_s=3
    )
    topics = Topics(prefix)
    return settings, topics, TrackingStage(settings, topics, MemoryOutbox(), lambda m: False)


@pytest.mark.asyncio
async def test_camera_configurations_are_read_to_the_end_or_start_up_fails_naming_the_topic(
    kafka_bootstrap: str,
) -> None:
    prefix = unique_prefix()
    settings, topics, stage = _stage(kafka_bootstrap, prefix)
    await create_topic(kafka_bootstrap, topics.zones)
    async with raw_producer(kafka_bootstrap) as producer:
        for camera in ("cam-1", "cam-2"):
            key, value = CameraConfig(camera=camera).to_record()
            await producer.send_and_wait(topics.zones, value, key=key)
    feed = CameraFeed(settings, topics, stage)
    try:
        await asyncio.wait_for(feed.catch_up(time.monotonic() + 10), 30)
    finally:
        await feed.close()
    assert stage.cameras("m").config("cam-1") is not None
    assert stage.cameras("m").config("cam-2") is not None

    # No such topic (deleted, or a cluster that refused to create it): the worker used
    # to wait for good, unready, before joining its group.
    _, missing_topics, missing_stage = _stage(kafka_bootstrap, unique_prefix())
    missing = CameraFeed(settings, missing_topics, missing_stage)
    began = time.monotonic()
    try:
        with pytest.raises(ServiceUnavailable, match=missing_topics.zones):
            await asyncio.wait_for(missing.catch_up(time.monotonic() + 3), 30)
    finally:
        await missing.close()
    assert time.monotonic() - began < 15


@pytest.mark.asyncio
async def test_with_the_broker_away_start_up_fails_by_its_deadline_as_service_unavailable() -> None:
    settings, topics, stage = _stage("127.0.0.1:9", "away")
    feed = CameraFeed(settings, topics, stage)
    try:
        with pytest.raises(ServiceUnavailable, match="reading camera configurations"):
            await asyncio.wait_for(feed.catch_up(time.monotonic() + 2), 30)
    finally:
        await feed.close()


@pytest.mark.asyncio
async def test_a_missing_state_topic_is_logged_and_the_restore_goes_on_once_it_exists(
    kafka_bootstrap: str, caplog: pytest.LogCaptureFixture
) -> None:
    prefix = unique_prefix()
    settings, topics, _ = _stage(kafka_bootstrap, prefix)
    outbox = PartitionOutbox()
    stage = TrackingStage(settings, topics, outbox, lambda m: True)
    await create_topic(kafka_bootstrap, topics.requests("m"))
    restored = "tracking state restored"
    try:
        with caplog.at_level(logging.INFO, logger="consumer.tracking_stage"):
            stage.assigned([TopicPartition(topics.requests("m"), 0)])
            deadline = time.monotonic() + 20
            while "tracking state not read, retrying" not in caplog.messages:
                assert time.monotonic() < deadline, "a missing state topic is waited on silently"
                await asyncio.sleep(0.1)
            assert restored not in caplog.messages  # its frames still wait: nothing was read
            await create_topic(kafka_bootstrap, topics.state("m"))
            async with raw_producer(kafka_bootstrap) as producer:
                await producer.send_and_wait(topics.state("m"), b"{}", key=b"cam", partition=0)
            deadline = time.monotonic() + 30
            while restored not in caplog.messages:
                assert time.monotonic() < deadline, "the restore never went on"
                await asyncio.sleep(0.1)
        assert stage.cameras("m").has_state("cam")
        # That record is no state (`{}`): the camera's next frame is answered and
        # tracked anew, its new state written; nothing fails or waits.
        answered: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        box = {
            "ObjectClassName": "red rectangle",
            "ObjectClassId": 1,
            "confidence": 95.0,
            "coordinates": {"left": 10, "top": 10, "right": 50, "bottom": 50},
        }
        answered.set_result(Answer(Reply("c", "m", data=detection_data([box], None, 640, 480))))
        frame = Record(topics.requests("m"), 0, 0, b"cam", b"")
        with caplog.at_level(logging.ERROR, logger="consumer.tracking_stage"):
            result = await asyncio.wait_for(stage.tracked(frame, "m", answered), 10)
        assert "tracking state unreadable: the camera starts anew" in caplog.messages
        assert isinstance(result, TrackedAnswer) and result.writes is not None
        await asyncio.wait_for(result.writes(), 10)
        (state,) = outbox.to(topics.state("m"))
        assert json.loads(state.value or b"")["position"]["offset"] == 0
    finally:
        await stage.close()


@pytest.mark.asyncio
async def test_a_restore_skips_a_key_no_camera_wrote_and_keeps_nothing_of_a_revoked_partition(
    kafka_bootstrap: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A state record keyed with bytes that are not UTF-8 used to fail the restore, again
    at each frame of the partition, which then waited for good; a partition revoked
    while its restore ran left its cameras' states in memory."""
    prefix = unique_prefix()
    settings, topics, _ = _stage(kafka_bootstrap, prefix)
    await create_topic(kafka_bootstrap, topics.state("m"))
    async with raw_producer(kafka_bootstrap) as producer:
        for key in (b"\xff\xfe", b"cam"):
            await producer.send_and_wait(topics.state("m"), b"{}", key=key, partition=0)
    restored = "tracking state restored"
    request_partition = TopicPartition(topics.requests("m"), 0)

    async def restore(revoke: bool) -> TrackingStage:
        stage = TrackingStage(settings, topics, MemoryOutbox(), lambda m: True)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="consumer.tracking_stage"):
            stage.assigned([request_partition])
            if revoke:
                stage.revoked([request_partition])
            deadline = time.monotonic() + 30
            while restored not in caplog.messages:
                assert time.monotonic() < deadline, "the restore never ended"
                await asyncio.sleep(0.1)
        return stage

    kept = await restore(revoke=False)
    try:
        assert "tracking state record skipped: its key is not UTF-8" in caplog.messages
        assert kept.cameras("m").cameras == {"cam"}
    finally:
        await kept.close()
    gone = await restore(revoke=True)
    try:
        assert gone.cameras("m").cameras == set()
    finally:
        await gone.close()
