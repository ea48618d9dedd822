"""consumer/tracking_stage.py without a broker: order of applying and of writes, defaults.

The state partitions' reading is Kafka's (tests/consumer/test_tracking_kafka.py);
here it is replaced by a reader that finds nothing, so what is tested is what
the stage does with frames once a partition is restored.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable
from typing import Any

import pytest

from consumer.pipeline import Answer, Pipeline
from consumer.protocol import Headers, Reply, detection_data
from consumer.records import Record, RecordAdapter
from consumer.settings import ConsumerSettings
from consumer.tracking.config import CameraConfig, TrackerConfig, ZoneConfig
from consumer.tracking_stage import TrackedAnswer, TrackingStage
from tests.consumer.fakes import TOPICS, MemoryOutbox, record

REQUESTS = TOPICS.requests("tracked")


class PartitionOutbox(MemoryOutbox):
    """Also keeps the partition each record was sent to."""

    def __init__(self, auto_ack: bool = True, broken: dict[str, int] | None = None) -> None:
        super().__init__(auto_ack=auto_ack, broken=broken or {})
        self.partitions: list[tuple[str, int | None]] = []

    def send(  # type: ignore[override]
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None,
        headers: Headers,
        partition: int | None = None,
    ) -> Awaitable[None]:
        self.partitions.append((topic, partition))
        return super().send(topic, value, key, headers)


def _stage(outbox: MemoryOutbox) -> TrackingStage:
    stage = TrackingStage(
        ConsumerSettings(bootstrap="unused:9092"), TOPICS, outbox, lambda m: m == "tracked"
    )

    async def nothing_stored(partitions: list[tuple[str, int]]) -> None:
        return None

    stage._read_states_once = nothing_stored  # type: ignore[method-assign]
    return stage


def _box(x: int) -> dict[str, Any]:
    return {
        "ObjectClassName": "red rectangle",
        "ObjectClassId": 1,
        "confidence": 95.0,
        "coordinates": {"left": x, "top": 100, "right": x + 40, "bottom": 140},
    }


def _answer(x: int) -> Answer:
    return Answer(Reply("c", "tracked", data=detection_data([_box(x)], None, 640, 480)))


def _record(offset: int, camera: str = "cam", topic: str = REQUESTS) -> Record:
    headers = (("capture-ms", str(offset * 66).encode()),)
    return Record(topic, 3, offset, camera.encode(), b"", headers)


def _states(outbox: MemoryOutbox) -> list[dict[str, Any]]:
    return [json.loads(s.value or b"") for s in outbox.sent if ".state." in s.topic]


@pytest.mark.asyncio
async def test_frames_of_a_camera_are_applied_in_fetch_order_whatever_order_answers_come() -> None:
    outbox = PartitionOutbox()
    stage = _stage(outbox)
    answers = [asyncio.get_running_loop().create_future() for _ in range(4)]
    tracked = [stage.tracked(_record(i), "tracked", answers[i]) for i in range(4)]
    for i in (3, 1, 2, 0):  # the pipeline answers out of order
        answers[i].set_result(_answer(100 + 5 * i))
    results = await asyncio.gather(*tracked)
    for result in results:
        assert isinstance(result, TrackedAnswer) and result.writes is not None
        await result.writes()
    # Every frame applied (none refused as covered), in offset order: IDs from frame 1 on.
    ids = [r.reply.data["bounding-boxes"][0]["track_id"] for r in results]  # type: ignore[index]
    assert ids[1:] == [ids[1]] * 3 and ids[1] is not None
    assert _states(outbox)[-1]["position"]["offset"] == 3
    # State records go to the partition number of the requests.
    assert {p for t, p in outbox.partitions if t == TOPICS.state("tracked")} == {3}


@pytest.mark.asyncio
async def test_the_state_is_written_only_after_the_frame_s_events_are_acknowledged() -> None:
    outbox = PartitionOutbox(auto_ack=False)
    stage = _stage(outbox)
    zone = ZoneConfig(name="all", polygon=[(0, 0), (640, 0), (640, 480), (0, 480)], min_frames=1)
    config = CameraConfig(camera="cam", tracker=TrackerConfig(frame_rate=15), zones=[zone])
    stage.configure(*config.to_record())
    writes = []
    for i in range(4):
        done: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        done.set_result(_answer(100 + 5 * i))
        result = await stage.tracked(_record(i), "tracked", done)
        assert isinstance(result, TrackedAnswer) and result.writes is not None
        writes.append(asyncio.ensure_future(result.writes()))
    await asyncio.sleep(0.05)
    events = [s for s in outbox.sent if s.topic == TOPICS.events("tracked")]
    assert [json.loads(e.value or b"")["kind"] for e in events] == ["enter"]
    # Nothing of the frame with the event, nor after it, is in the state topic yet.
    offsets = [state["position"]["offset"] for state in _states(outbox)]
    enter_offset = json.loads(events[0].value or b"")["position"]["offset"]
    assert all(o < enter_offset for o in offsets)
    for sent in outbox.sent:
        if not sent.ack.done():
            sent.ack.set_result(None)
    while not all(w.done() for w in writes):
        for sent in outbox.sent:
            if not sent.ack.done():
                sent.ack.set_result(None)
        await asyncio.sleep(0.01)
    assert _states(outbox)[-1]["position"]["offset"] == 3
    assert _states(outbox)[-1]["counts"] == {"all": {"red rectangle": {"enter": 1}}}


@pytest.mark.asyncio
async def test_the_model_default_and_a_camera_s_own_record() -> None:
    outbox = PartitionOutbox()
    stage = _stage(outbox)

    async def once(record: Record, model: str) -> Answer:
        done: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        done.set_result(_answer(100))
        return await stage.tracked(record, model, done)

    # A model whose config.json tracks: a camera with no record gets track_id keys.
    tracked = await once(_record(0), "tracked")
    assert "track_id" in tracked.reply.data["bounding-boxes"][0]  # type: ignore[index]
    # A model that does not: answered as it came, nothing written.
    plain = await once(_record(0, topic=TOPICS.requests("plain")), "plain")
    assert plain.reply.data["bounding-boxes"] == [_box(100)]  # type: ignore[index]
    assert not isinstance(plain, TrackedAnswer)
    # The camera's own record wins over the default; a broken record changes nothing.
    stage.configure(b"cam", CameraConfig(camera="cam", tracking=False).to_record()[1])
    stage.configure(b"cam", b'{"camera": "cam", "lines": [{"name": 1}]}')
    stage.configure(b"cam", CameraConfig(camera="other").to_record()[1])  # wrong key
    off = await once(_record(1), "tracked")
    assert off.reply.data["bounding-boxes"] == [_box(100)]  # type: ignore[index]
    # A keyless record is never tracked.
    keyless = Record(REQUESTS, 3, 5, None, b"")
    done: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
    assert stage.tracked(keyless, "tracked", done) is done


@pytest.mark.asyncio
async def test_partitions_of_models_not_in_the_repository_are_not_restored() -> None:
    """A worker serving every model is assigned request topics of unknown models too: it
    must not read their state topics (they do not exist; the read would wait for good)."""
    from aiokafka import TopicPartition

    stage = TrackingStage(
        ConsumerSettings(bootstrap="unused:9092"),
        TOPICS,
        PartitionOutbox(),
        lambda m: True,
        known=lambda m: m != "ghost",
    )
    read: list[list[tuple[str, int]]] = []

    async def remember(partitions: list[tuple[str, int]]) -> None:
        read.append(partitions)

    stage._read_states_once = remember  # type: ignore[method-assign]
    stage.assigned([TopicPartition(TOPICS.requests("ghost"), 0), TopicPartition(REQUESTS, 1)])
    await asyncio.sleep(0.01)
    assert read == [[(REQUESTS, 1)]]


async def _zone_frames(outbox: MemoryOutbox, frames: int = 4) -> list[TrackedAnswer]:
    """`frames` answers of camera `cam`, configured with one zone over the whole image
    (its box enters once)."""
    stage = _stage(outbox)
    zone = ZoneConfig(name="all", polygon=[(0, 0), (640, 0), (640, 480), (0, 480)], min_frames=1)
    config = CameraConfig(camera="cam", tracker=TrackerConfig(frame_rate=15), zones=[zone])
    stage.configure(*config.to_record())
    results = []
    for i in range(frames):
        done: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        done.set_result(_answer(100 + 5 * i))
        result = await stage.tracked(_record(i), "tracked", done)
        assert isinstance(result, TrackedAnswer) and result.writes is not None
        results.append(result)
    return results


def _acked_states(outbox: MemoryOutbox, model: str = "tracked") -> list[int]:
    return [
        json.loads(s.value or b"")["position"]["offset"] for s in outbox.to(TOPICS.state(model))
    ]


@pytest.mark.asyncio
@pytest.mark.parametrize("then", ["written", "given_up"])
async def test_a_camera_s_state_waits_for_events_that_failed_until_they_are_written_or_given_up(
    then: str,
) -> None:
    """A later state counts the failed frame's events too: written before those events,
    a worker dying then would restart past them (the state covers the frame) and they
    would be lost. Given up (the request dead-lettered), the camera goes on."""
    outbox = PartitionOutbox()
    outbox.broken[TOPICS.events("tracked")] = 1  # the frame with the zone's enter
    results = await _zone_frames(outbox)
    writes = [asyncio.ensure_future(r.writes()) for r in results if r.writes is not None]
    await asyncio.sleep(0.05)
    failed = [i for i, w in enumerate(writes) if w.done() and w.exception() is not None]
    assert len(failed) == 1, failed
    (entered,) = failed
    assert all(offset < entered for offset in _acked_states(outbox)), _acked_states(outbox)
    assert not any(w.done() for w in writes[entered + 1 :])
    if then == "written":
        retry = results[entered].writes
        assert retry is not None
        await retry()
        assert [
            json.loads(e.value or b"")["kind"] for e in outbox.to(TOPICS.events("tracked"))
        ] == ["enter"]
    else:
        results[entered].settled()
    await asyncio.wait_for(asyncio.gather(*writes[entered + 1 :]), 2)
    assert _acked_states(outbox)[-1] == 3


@pytest.mark.asyncio
async def test_a_frame_s_state_written_again_never_takes_the_record_back() -> None:
    """Frame 0's state fails, frame 3's goes through (covering 0), then frame 0's writes
    are tried again: its older state must not become the camera's last record."""
    outbox = PartitionOutbox()
    outbox.broken[TOPICS.state("tracked")] = 1
    results = await _zone_frames(outbox)
    writes = [asyncio.ensure_future(r.writes()) for r in results if r.writes is not None]
    done = await asyncio.gather(*writes, return_exceptions=True)
    assert isinstance(done[0], RuntimeError) and done[1:] == [None] * 3, done
    acked = _acked_states(outbox)
    assert acked[-1] == 3
    retry = results[0].writes
    assert retry is not None
    await retry()  # the delivery's second attempt: events again (same ids), state covered
    assert _acked_states(outbox) == acked
    states = [s for s in outbox.sent if s.topic == TOPICS.state("tracked")]
    assert len(states) == 1 + len(acked)  # the failed one and those acked: nothing more


@pytest.mark.asyncio
async def test_an_untracked_camera_s_frame_costs_no_task() -> None:
    """Frames of cameras nobody tracks (the model's default off, no record of their own)
    go by untouched: the very awaitable of their answer, no task or order per frame."""
    stage = _stage(PartitionOutbox())
    done: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
    plain = _record(0, topic=TOPICS.requests("plain"))
    assert stage.tracked(plain, "plain", done) is done
    # Configured by its own record, the same camera is tracked from its next frame.
    stage.configure(*CameraConfig(camera="cam").to_record())
    tracked = stage.tracked(_record(1, topic=TOPICS.requests("plain")), "plain", done)
    assert tracked is not done
    done.set_result(_answer(100))
    assert isinstance(await tracked, TrackedAnswer)


@pytest.mark.asyncio
async def test_a_frame_whose_events_are_never_written_is_dead_lettered_and_its_camera_goes_on(
    pipeline: Pipeline,
) -> None:
    """Through the worker's delivery: the frame with the zone's enter cannot write its
    events (every try fails), goes to the DLQ, and the camera's later frames, whose
    states wait for that frame, are still written and done: no partition stuck."""
    outbox = PartitionOutbox(broken={TOPICS.events("a"): 1000})
    stage = _stage(outbox)
    everywhere = [(0, 0), (10_000, 0), (10_000, 10_000), (0, 10_000)]
    zone = ZoneConfig(name="all", polygon=everywhere, min_frames=1)
    stage.configure(
        *CameraConfig(
            camera="camera-1", tracker=TrackerConfig(frame_rate=15), zones=[zone]
        ).to_record()
    )
    adapter = RecordAdapter(pipeline, TOPICS, outbox, "w1")
    adapter.tracking = stage
    frames = [record(i, correlation_id=f"c{i}", capture_ms=str(i * 66)) for i in range(6)]
    done = [adapter.submit(frame) for frame in frames]
    await asyncio.wait_for(asyncio.gather(*done), 10)
    (dead,) = outbox.to(TOPICS.dlq)
    assert dead.headers["dlq-reason-code"] == "reply_undeliverable"
    states = _acked_states(outbox, "a")
    assert states and states[-1] == 5 and int(dead.headers["dlq-source-offset"]) < 5
    assert adapter.inflight == 0
