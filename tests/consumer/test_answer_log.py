"""The answer log and the shadow's output without Kafka: which records go where,
what a logged answer holds, the shadow's settings and its metrics labels.

The same rules against a real broker and worker processes: tests/consumer/test_shadow_kafka.py.
"""

from __future__ import annotations

import asyncio
import json
from functools import partial

import pytest
from prometheus_client import generate_latest
from pydantic import ValidationError

from consumer import answer_log
from consumer.answer_log import AnswerSink, LoggedAnswer, Role
from consumer.metrics import WorkerMetrics
from consumer.pipeline import Pipeline
from consumer.protocol import Reply, Topics
from consumer.records import RecordAdapter
from consumer.settings import ConsumerSettings, parse_shadow_from
from consumer.shadow import ShadowAdapter, shadow_registry
from engines.errors import InvalidRequest, NotAuthorized
from tests.consumer import fakes
from tests.consumer.fakes import TOPICS, MemoryOutbox, handled, until

# Partition 2 and a record timestamp, which the answer log carries on.
record = partial(fakes.record, partition=2, timestamp_ms=1_000)


def serving(pipeline: Pipeline, outbox: MemoryOutbox) -> RecordAdapter:
    sink = AnswerSink(TOPICS, outbox, pipeline.metrics)
    return RecordAdapter(pipeline, TOPICS, outbox, "w1", answer_log=sink)


def shadow(pipeline: Pipeline, outbox: MemoryOutbox) -> ShadowAdapter:
    sink = AnswerSink(TOPICS, outbox, pipeline.metrics, Role.SHADOW, "v2")
    return ShadowAdapter(pipeline, TOPICS, sink, "w1")


@pytest.mark.asyncio
async def test_every_answer_is_logged_beside_its_reply_whoever_asked(pipeline: Pipeline) -> None:
    outbox = MemoryOutbox()
    await handled(
        serving(pipeline, outbox),
        record(5, correlation_id="asked", reply_to="t.replies.me"),
        record(6, correlation_id="camera"),  # no reply-to: answered on the results topic
        record(7, b"not an image", correlation_id="broken", reply_to="t.replies.me"),
    )
    logged = {
        LoggedAnswer.from_json(s.value or b"").correlation_id: s for s in outbox.to("t.answers.a")
    }
    assert sorted(logged) == ["asked", "broken", "camera"]
    assert [s.headers["correlation-id"] for s in outbox.to("t.results.a")] == ["camera"]
    assert len(outbox.to("t.dlq")) == 1  # the broken image, as without the log
    ok = LoggedAnswer.from_json(logged["asked"].value or b"")
    assert (ok.role, ok.model, ok.key, ok.reply_to) == (
        Role.SERVING,
        "a",
        "camera-1",
        "t.replies.me",
    )
    assert (ok.request.topic, ok.request.partition, ok.request.offset) == ("t.requests.a", 2, 5)
    assert ok.request.timestamp_ms == 1_000 and ok.latency_ms == ok.answered_ms - 1_000
    assert ok.reply.success and len((ok.reply.data or {})["bounding-boxes"]) == 1
    assert ok.reply.timing.batch_size >= 1 and ok.reply.timing.inference_ms > 0
    # The weights that answered: the flat layout is version 1.
    assert ok.model_version == 1 and logged["asked"].headers["model-version"] == "1"
    assert logged["asked"].key == b"camera-1"
    assert logged["asked"].headers["answer-role"] == "serving"
    camera = LoggedAnswer.from_json(logged["camera"].value or b"")
    assert camera.reply_to == "t.results.a"
    broken = logged["broken"]
    assert broken.headers["error-code"] == "invalid_image"
    assert LoggedAnswer.from_json(broken.value or b"").reply.error is not None


@pytest.fixture
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(answer_log, "RETRY_FIRST_S", 0.005)
    monkeypatch.setattr(answer_log, "RETRY_MAX_S", 0.02)


@pytest.mark.asyncio
@pytest.mark.usefixtures("quick_retries")
async def test_a_refused_log_record_holds_its_request_until_it_is_written(
    pipeline: Pipeline,
) -> None:
    """The log is an audit trail: a request whose log record the topic refuses is
    answered, but not done (so not committed) until the record is written; each
    failure counts, and the worker is not ready meanwhile, naming the topic."""
    outbox = MemoryOutbox(refuse={"t.answers.a"})
    adapter = serving(pipeline, outbox)
    assert adapter.answer_log is not None
    problems = adapter.answer_log.problems
    done = adapter.submit(record(0, correlation_id="c1", reply_to="t.r"))
    await until(lambda: pipeline.metrics.answers_not_logged.labels("a")._value.get() >= 2)
    assert [s.headers["correlation-id"] for s in outbox.to("t.r")] == ["c1"]
    assert not done.done()
    assert "t.answers.a" in " ".join(problems.snapshot()) and problems
    outbox.refuse.clear()  # the topic takes records again (ACL granted, size raised)
    await asyncio.wait_for(done, 5)
    assert [s.headers["correlation-id"] for s in outbox.to("t.answers.a")] == ["c1"]
    assert not problems


@pytest.mark.asyncio
async def test_a_request_stays_uncommitted_while_its_log_record_is_pending(
    pipeline: Pipeline,
) -> None:
    outbox = MemoryOutbox(auto_ack=False)
    adapter = serving(pipeline, outbox)
    done = adapter.submit(record(0, correlation_id="c1", reply_to="t.r"))
    await until(lambda: len(outbox.sent) == 2)
    (reply,) = [s for s in outbox.sent if s.topic == "t.r"]
    (logged,) = [s for s in outbox.sent if s.topic == "t.answers.a"]
    reply.ack.set_result(None)
    await asyncio.sleep(0.05)
    assert not done.done() and adapter.inflight == 1  # answered, not yet logged
    logged.ack.set_result(None)
    await asyncio.wait_for(done, 5)
    assert adapter.inflight == 0


@pytest.mark.asyncio
@pytest.mark.usefixtures("quick_retries")
async def test_a_log_topic_whose_creation_failed_is_created_again() -> None:
    """A creation that failed is not remembered as made: the record waits, the next
    attempt creates the topic, and later records of that topic create nothing more."""
    made: list[str] = []

    async def ensure(topic: str) -> None:
        made.append(topic)
        if len(made) == 1:
            raise NotAuthorized(f"not authorized: Create on topic '{topic}'")

    outbox = MemoryOutbox()
    metrics = WorkerMetrics()
    sink = AnswerSink(TOPICS, outbox, metrics, ensure=ensure)
    await asyncio.wait_for(sink.write(record(0), "new", Reply("c0", "new", data={}), None), 5)
    await asyncio.wait_for(sink.write(record(1), "new", Reply("c1", "new", data={}), None), 5)
    assert made == [TOPICS.answers("new")] * 2
    assert len(outbox.to(TOPICS.answers("new"))) == 2
    assert metrics.answers_not_logged.labels("new")._value.get() == 1 and not sink.problems


@pytest.mark.asyncio
async def test_a_shadow_answers_only_on_its_own_topic(pipeline: Pipeline) -> None:
    outbox = MemoryOutbox()
    await handled(
        shadow(pipeline, outbox),
        record(0, correlation_id="asked", reply_to="t.replies.me"),
        record(1, correlation_id="camera"),
        record(2, b"not an image", correlation_id="broken", reply_to="t.replies.me"),
        record(3, model="ghost", correlation_id="unknown"),
        record(4, reply_to="t.replies.me"),  # no correlation id
    )
    assert {s.topic for s in outbox.sent} == {"t.shadow.v2.a", "t.shadow.v2.ghost"}
    found = [LoggedAnswer.from_json(s.value or b"") for s in outbox.sent]
    by_id = {a.ident: a for a in found}
    assert set(by_id) == {"asked", "camera", "broken", "unknown", "t.requests.a:2:4"}
    assert all(a.role is Role.SHADOW and a.shadow == "v2" and a.reply_to is None for a in found)
    assert by_id["asked"].reply.success
    assert by_id["broken"].reply.error is not None
    assert by_id["unknown"].reply.error is not None
    assert by_id["unknown"].reply.error.code == "model_not_found"
    assert all(s.headers["shadow-name"] == "v2" for s in outbox.sent)
    assert pipeline.metrics.dlq.labels("a", "invalid_image")._value.get() == 0


def test_a_logged_answer_round_trips_and_junk_is_refused() -> None:
    sink = AnswerSink(Topics("t"), MemoryOutbox(), WorkerMetrics(), Role.SHADOW, "v2")
    logged = sink.entry(record(9), "a", Reply("c9", "a", data={"bounding-boxes": []}), None)
    again = LoggedAnswer.from_json(logged.to_json())
    assert again == logged
    # The reply goes in verbatim, and the record is the same compact JSON as if the
    # whole of it had been encoded at once.
    body = logged.to_json()
    assert logged.reply.to_json() in body
    assert json.dumps(json.loads(body), separators=(",", ":")).encode() == body
    with pytest.raises(InvalidRequest, match="answer-log record"):
        LoggedAnswer.from_json(b'{"role": "serving"}')
    with pytest.raises(InvalidRequest):
        LoggedAnswer.from_json(b"\xff")


def test_shadow_settings_are_checked() -> None:
    assert ConsumerSettings(shadow="v2").consumer_group() == "tfstream-workers.shadow.v2"
    assert ConsumerSettings(group="g").consumer_group() == "g"
    assert ConsumerSettings(shadow="v2", shadow_from="1700000000000").shadow_start_ms() == (
        1_700_000_000_000
    )
    same = parse_shadow_from("2026-01-01T01:00:00+01:00")
    assert parse_shadow_from("2026-01-01T00:00:00") == same
    assert parse_shadow_from("") is None
    for bad in (
        {"shadow": "v.2"},
        {"shadow": "v2", "answer_log": True},
        {"shadow_from": "0"},
        {"shadow": "v2", "shadow_from": "yesterday"},
    ):
        with pytest.raises(ValidationError):
            ConsumerSettings(**bad)


def test_shadow_metrics_carry_the_role() -> None:
    metrics = WorkerMetrics(shadow_registry("v2"))
    metrics.answered("a")
    text = generate_latest(metrics.registry).decode()
    assert 'tfstream_requests_total{model="a",role="shadow",shadow="v2"} 1.0' in text
    assert "role=" not in generate_latest(WorkerMetrics().registry).decode()


@pytest.mark.asyncio
async def test_a_topic_made_on_first_need_is_made_once_and_keeps_the_order() -> None:
    """Two answers of one camera for a model whose log topic was not made at start:
    one creation, both waiting for it, written in the order they came."""
    made: list[str] = []
    gate = asyncio.Event()

    async def ensure(topic: str) -> None:
        made.append(topic)
        await gate.wait()

    outbox = MemoryOutbox()
    sink = AnswerSink(TOPICS, outbox, WorkerMetrics(), ensure=ensure)
    writes = [
        asyncio.ensure_future(
            sink.write(record(i), "new", Reply(f"c{i}", "new", data={}), None)  # one key
        )
        for i in range(3)
    ]
    await asyncio.sleep(0.01)
    assert made == [TOPICS.answers("new")] and outbox.sent == []
    gate.set()
    await asyncio.wait_for(asyncio.gather(*writes), 5)
    ids = [LoggedAnswer.from_json(s.value or b"").correlation_id for s in outbox.sent]
    assert ids == ["c0", "c1", "c2"] and made == [TOPICS.answers("new")]


@pytest.mark.asyncio
@pytest.mark.usefixtures("quick_retries")
async def test_a_log_record_retried_keeps_the_records_of_its_key_behind_it() -> None:
    outbox = MemoryOutbox(broken={TOPICS.answers("a"): 1})  # the first attempt fails
    sink = AnswerSink(TOPICS, outbox, WorkerMetrics())
    writes = [sink.write(record(i), "a", Reply(f"c{i}", "a", data={}), None) for i in range(3)]
    await asyncio.wait_for(asyncio.gather(*writes), 5)
    ids = [LoggedAnswer.from_json(s.value or b"").correlation_id for s in outbox.to("t.answers.a")]
    assert ids == ["c0", "c1", "c2"]
