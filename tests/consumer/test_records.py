"""The Kafka side of the pipeline without Kafka: records in, reply and DLQ records
out through an in-memory outbox, and the offsets that may be committed."""

from __future__ import annotations

import asyncio

import pytest

from consumer import records
from consumer.offsets import OffsetTracker
from consumer.outbox import OutboxClosed
from consumer.pipeline import Pipeline
from consumer.protocol import Reply, header_map
from consumer.records import AnswerDropped, Record, RecordAdapter
from tests.consumer.fakes import IMAGE, TOPICS, MemoryOutbox, handled, record, until


@pytest.mark.asyncio
async def test_the_reply_goes_to_reply_to_with_the_record_s_key(pipeline: Pipeline) -> None:
    outbox = MemoryOutbox()
    adapter = RecordAdapter(pipeline, TOPICS, outbox, "w1")
    await handled(adapter, record(0, correlation_id="c1", reply_to="t.replies.me"))
    (sent,) = outbox.sent
    assert (sent.topic, sent.key, sent.headers["correlation-id"]) == (
        "t.replies.me",
        b"camera-1",
        "c1",
    )
    assert Reply.from_json(sent.value or b"").success
    assert adapter.inflight == 0


@pytest.mark.asyncio
async def test_without_reply_to_the_reply_goes_to_the_results_topic(pipeline: Pipeline) -> None:
    outbox = MemoryOutbox()
    await handled(RecordAdapter(pipeline, TOPICS, outbox, "w1"), record(0, correlation_id="c1"))
    assert [s.topic for s in outbox.sent] == ["t.results.a"]


@pytest.mark.asyncio
async def test_a_refused_reply_topic_falls_back_to_the_results_topic(pipeline: Pipeline) -> None:
    outbox = MemoryOutbox(refuse={"t.replies.gone"})
    adapter = RecordAdapter(pipeline, TOPICS, outbox, "w1")
    await handled(adapter, record(0, correlation_id="c1", reply_to="t.replies.gone"))
    assert [s.topic for s in outbox.sent] == ["t.replies.gone", "t.results.a"]
    assert [s.headers["correlation-id"] for s in outbox.to("t.results.a")] == ["c1"]


@pytest.mark.asyncio
async def test_when_no_topic_takes_the_reply_the_request_is_dead_lettered(
    pipeline: Pipeline,
) -> None:
    outbox = MemoryOutbox(refuse={"t.replies.gone", "t.results.a"})
    adapter = RecordAdapter(pipeline, TOPICS, outbox, "w1")
    await handled(adapter, record(7, correlation_id="c1", reply_to="t.replies.gone"))
    (dead,) = outbox.to("t.dlq")
    assert dead.value == IMAGE and dead.key == b"camera-1"
    assert dead.headers["dlq-reason-code"] == "reply_undeliverable"
    assert dead.headers["dlq-source-offset"] == "7" and dead.headers["dlq-worker"] == "w1"


@pytest.mark.parametrize(
    ("sent", "code", "dead_letter"),
    [
        (record(0, b"not an image", correlation_id="c", reply_to="t.r"), "invalid_image", True),
        (record(0, b"", correlation_id="c", reply_to="t.r"), "invalid_image", True),
        (record(0, correlation_id="c", reply_to="t.r", confidence="lots"), "invalid_request", True),
        (record(0, correlation_id="c", reply_to="t.r", predictions="-1"), "invalid_request", True),
        (record(0, reply_to="t.r"), "invalid_request", True),  # no correlation id
        (
            record(0, correlation_id="c", reply_to="t.r", deadline_ms="1"),
            "deadline_exceeded",
            False,
        ),
        (record(0, model="ghost", correlation_id="c", reply_to="t.r"), "model_not_found", True),
    ],
)
@pytest.mark.asyncio
async def test_a_failed_request_is_answered_and_copied_to_the_dlq_unless_expired(
    pipeline: Pipeline, sent: Record, code: str, dead_letter: bool
) -> None:
    outbox = MemoryOutbox()
    await handled(RecordAdapter(pipeline, TOPICS, outbox, "w1"), sent)
    (reply,) = outbox.to("t.r")
    assert reply.headers["error-code"] == code and reply.key == b"camera-1"
    assert reply.headers.get("correlation-id") == header_map(sent.headers).get("correlation-id")
    dead = outbox.to("t.dlq")
    assert len(dead) == int(dead_letter)
    if dead_letter:
        h = dead[0].headers
        assert dead[0].value == sent.value and h["reply-to"] == "t.r"
        assert (h["dlq-reason-code"], h["dlq-source-topic"]) == (code, sent.topic)


@pytest.mark.asyncio
async def test_an_offset_is_committed_only_once_its_answer_and_everything_before_are_acked(
    pipeline: Pipeline,
) -> None:
    outbox = MemoryOutbox(auto_ack=False)
    adapter = RecordAdapter(pipeline, TOPICS, outbox, "w1")
    offsets = OffsetTracker()
    done = []
    for offset in range(3):
        offsets.track("p0", offset)
        future = adapter.submit(record(offset, correlation_id=f"c{offset}", reply_to="t.r"))
        future.add_done_callback(lambda f, o=offset: f.exception() or offsets.finish("p0", o))
        done.append(future)
    await until(lambda: len(outbox.sent) == 3)  # every answer waits for its acknowledgement

    def commit() -> dict[object, int]:
        points = offsets.commit_points()
        offsets.committed(points)
        return points

    by_id = {s.headers["correlation-id"]: s for s in outbox.sent}
    assert commit() == {"p0": 0}
    by_id["c1"].ack.set_result(None)
    await asyncio.wait_for(done[1], 5)
    assert commit() == {}  # offset 0 is still unanswered: nothing moves
    by_id["c0"].ack.set_result(None)
    await asyncio.wait_for(done[0], 5)
    assert commit() == {"p0": 2}
    by_id["c2"].ack.set_exception(OutboxClosed("shutdown out of time"))
    with pytest.raises(OutboxClosed):
        await asyncio.wait_for(done[2], 5)
    assert commit() == {}  # an answer cut off by shutdown is never committed past
    assert adapter.inflight == 0


@pytest.fixture
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(records, "RETRY_DELAY_S", 0.001)


@pytest.mark.asyncio
@pytest.mark.usefixtures("quick_retries")
async def test_a_send_that_fails_once_is_tried_again_and_written_once(pipeline: Pipeline) -> None:
    outbox = MemoryOutbox(broken={"t.results.a": 1})
    await handled(RecordAdapter(pipeline, TOPICS, outbox, "w1"), record(0, correlation_id="c1"))
    assert [s.headers["correlation-id"] for s in outbox.to("t.results.a")] == ["c1"]
    assert outbox.to("t.dlq") == []


@pytest.mark.asyncio
@pytest.mark.usefixtures("quick_retries")
async def test_an_answer_that_cannot_be_written_is_dead_lettered_after_bounded_attempts(
    pipeline: Pipeline,
) -> None:
    """A reply whose every send fails (not a refusal the fallback handles) does not stay
    pending for good: after DELIVERY_ATTEMPTS tries the request goes to the DLQ with
    the error, and its future resolves, so its offset can be committed."""
    outbox = MemoryOutbox(broken={"t.results.a": 1000})
    await handled(RecordAdapter(pipeline, TOPICS, outbox, "w1"), record(4, correlation_id="c1"))
    tries = [s for s in outbox.sent if s.topic == "t.results.a"]
    assert len(tries) == records.DELIVERY_ATTEMPTS
    (dead,) = outbox.to("t.dlq")
    assert dead.headers["dlq-reason-code"] == "reply_undeliverable"
    assert "producer broke" in dead.headers["dlq-reason"]
    assert dead.headers["dlq-source-offset"] == "4"


@pytest.mark.asyncio
@pytest.mark.usefixtures("quick_retries")
async def test_when_the_dlq_refuses_too_the_answer_is_dropped_with_its_reason(
    pipeline: Pipeline,
) -> None:
    outbox = MemoryOutbox(refuse={"t.results.a", "t.dlq"})
    adapter = RecordAdapter(pipeline, TOPICS, outbox, "w1")
    with pytest.raises(AnswerDropped, match="DLQ refused") as dropped:
        await asyncio.wait_for(adapter.submit(record(0, correlation_id="c1")), 10)
    assert dropped.value.model == "a" and "t.dlq" in dropped.value.reason
    assert adapter.inflight == 0
