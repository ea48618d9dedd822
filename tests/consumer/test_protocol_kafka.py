"""docs/protocol.md's promises to other-language clients, each checked on a real broker.

Topic creation and partitions, the reply topic's lifecycle, what is and is not
ordered, the partitioner (with librdkafka through confluent-kafka, the client
most non-Java languages wrap), header parsing, and the DLQ reason's encoding.
Requests are sent with plain aiokafka and header names written out, as an
outside client would.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from consumer import kafka_io
from consumer.settings import KafkaClientSettings
from deploy.local.processes import ConsumerProcess
from tests.support.workers import (
    create_topic,
    header_dict,
    raw_producer,
    read_to_end,
    read_topic,
    replies_by_id,
    unique_prefix,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

Truth = dict[str, list[dict[str, Any]]]
PARTITIONS = 3
PRECREATED = 2
#: Short, so that a reply topic that does not exist costs the worker seconds, not 15.
BROKER_TIMEOUT_MS = 3000


@pytest.fixture(scope="module")
def worker(
    kafka_bootstrap: str, model_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ConsumerProcess]:
    """Serves shapes_tf2 (its topics created by the worker) and shapes_tf1 (whose request
    topic a client created first, with another partition count)."""
    prefix = unique_prefix()
    asyncio.run(create_topic(kafka_bootstrap, f"{prefix}.requests.shapes_tf1", PRECREATED))
    proc = ConsumerProcess(
        kafka_bootstrap,
        model_repository,
        prefix,
        tmp_path_factory.mktemp("logs"),
        group=f"g-{prefix}",
        extra={
            "TFSTREAM_MODELS": "shapes_tf2,shapes_tf1",
            "TFSTREAM_PARTITIONS": str(PARTITIONS),
            "TFSTREAM_BROKER_TIMEOUT_MS": str(BROKER_TIMEOUT_MS),
            "TFSTREAM_MAX_BATCH": "4",
        },
    ).start()
    proc.wait_ready()
    yield proc
    proc.stop()


def image_with_objects(shapes_images: tuple[Path, Truth], minimum: int = 2) -> bytes:
    folder, truth = shapes_images
    name = next(n for n in sorted(truth) if n.endswith(".jpg") and len(truth[n]) >= minimum)
    return (folder / name).read_bytes()


def raw(**values: str) -> list[tuple[str, bytes]]:
    return [(k.replace("_", "-"), v.encode()) for k, v in values.items()]


async def partition_counts(bootstrap: str, topics: list[str]) -> dict[str, int]:
    async with raw_producer(bootstrap) as producer:
        return {t: len(await producer.partitions_for(t)) for t in topics}


@pytest.mark.asyncio
async def test_workers_create_the_topics_with_their_partitions_existing_ones_keep_theirs(
    worker: ConsumerProcess,
) -> None:
    p = worker.prefix
    counts = await partition_counts(
        worker.bootstrap,
        [
            f"{p}.requests.shapes_tf2",
            f"{p}.results.shapes_tf2",
            f"{p}.dlq",
            f"{p}.models",
            f"{p}.control",
            f"{p}.requests.shapes_tf1",
            f"{p}.results.shapes_tf1",
        ],
    )
    assert counts == {
        f"{p}.requests.shapes_tf2": PARTITIONS,
        f"{p}.results.shapes_tf2": PARTITIONS,
        f"{p}.dlq": PARTITIONS,
        f"{p}.models": 1,
        f"{p}.control": 1,
        f"{p}.requests.shapes_tf1": PRECREATED,  # created by a client first: left as it was
        f"{p}.results.shapes_tf1": PARTITIONS,
    }


@pytest.mark.asyncio
async def test_the_partitioner_of_other_clients_is_murmur2_as_in_java(
    worker: ConsumerProcess,
) -> None:
    """librdkafka's `murmur2_random` puts each key where tfstream's tools (aiokafka, whose
    default partitioner is the Java client's murmur2) put it; its own default does not."""
    from confluent_kafka import Producer

    topic = f"{worker.prefix}.partitioner"
    await create_topic(worker.bootstrap, topic, partitions=7)
    keys = [f"camera-{i}".encode() for i in range(40)]

    def produce(partitioner: str) -> dict[bytes, int]:
        placed: dict[bytes, int] = {}
        producer = Producer({"bootstrap.servers": worker.bootstrap, "partitioner": partitioner})
        for key in keys:
            producer.produce(
                topic,
                b"x",
                key=key,
                on_delivery=lambda err, msg: placed.__setitem__(msg.key(), msg.partition()),
            )
        assert producer.flush(30) == 0
        return placed

    murmur2 = await asyncio.to_thread(produce, "murmur2_random")
    crc32 = await asyncio.to_thread(produce, "consistent_random")  # librdkafka's default

    tools = kafka_io.producer(KafkaClientSettings(bootstrap=worker.bootstrap), "test")
    await tools.start()
    try:
        ours = {key: (await (await tools.send(topic, b"x", key=key))).partition for key in keys}
    finally:
        await tools.stop()
    assert len(set(ours.values())) > 3  # the keys spread: the comparison means something
    assert murmur2 == ours
    assert crc32 != ours


@pytest.mark.asyncio
async def test_an_answer_whose_reply_topic_is_missing_goes_to_the_results_topic(
    worker: ConsumerProcess, shapes_images: tuple[Path, Truth]
) -> None:
    """How long the worker's producer waits for the topic first is its
    --broker-timeout-ms, a cost (docs/protocol.md), not a contract: only where the
    answer goes is checked."""
    async with raw_producer(worker.bootstrap) as producer:
        await producer.send_and_wait(
            f"{worker.prefix}.requests.shapes_tf2",
            image_with_objects(shapes_images),
            key=b"cam-missing",
            headers=raw(correlation_id="lost", reply_to=f"{worker.prefix}.replies.never-made"),
        )
    records = await read_topic(
        worker.bootstrap,
        f"{worker.prefix}.results.shapes_tf2",
        expect=10**6,
        timeout_s=60,
        until=lambda recs: "lost" in replies_by_id(recs),
    )
    (answer,) = replies_by_id(records)["lost"]
    assert answer["success"] is True and answer["data"]["bounding-boxes"]
    dlq = await read_to_end(worker.bootstrap, f"{worker.prefix}.dlq")  # all there is
    assert not [r for r in dlq if dict(r.headers).get("correlation-id") == b"lost"]


@pytest.mark.asyncio
async def test_one_keys_answers_keep_their_order_and_errors_go_ahead(
    worker: ConsumerProcess, shapes_images: tuple[Path, Truth]
) -> None:
    """Same key, same image size: answered in order. A request rejected before it runs
    (here a malformed header) is answered at once, ahead of the frames queued before it."""
    reply_to = f"{worker.prefix}.replies.{uuid.uuid4().hex[:8]}"
    await create_topic(worker.bootstrap, reply_to)
    image = image_with_objects(shapes_images)
    async with raw_producer(worker.bootstrap) as producer:
        for i in range(12):
            await producer.send(
                f"{worker.prefix}.requests.shapes_tf2",
                image,
                key=b"cam-order",
                headers=raw(correlation_id=f"f{i}", reply_to=reply_to),
            )
        await producer.send(
            f"{worker.prefix}.requests.shapes_tf2",
            image,
            key=b"cam-order",
            headers=raw(correlation_id="bad", reply_to=reply_to, confidence="lots"),
        )
        await producer.flush()
    records = await read_topic(worker.bootstrap, reply_to, expect=13, timeout_s=120)
    order = [json.loads(r.value)["correlation_id"] for r in records]
    assert [c for c in order if c != "bad"] == [f"f{i}" for i in range(12)]
    assert order.index("bad") < order.index("f11"), order


@pytest.mark.asyncio
async def test_a_redelivery_repeats_answers_after_later_ones(
    kafka_bootstrap: str,
    model_repository: Path,
    shapes_images: tuple[Path, Truth],
    tmp_path: Path,
) -> None:
    """A worker killed before committing: the next member of the group answers the same
    requests again, so their second answers come after answers that followed them."""
    prefix = unique_prefix()
    extra = {"TFSTREAM_MODELS": "shapes_tf2", "TFSTREAM_COMMIT_INTERVAL_MS": "600000"}
    group = f"g-{prefix}"
    first = ConsumerProcess(
        kafka_bootstrap, model_repository, prefix, tmp_path, group=group, extra=extra
    )
    first.start().wait_ready()
    reply_to = f"{prefix}.replies.dup"
    await create_topic(kafka_bootstrap, reply_to)
    image = image_with_objects(shapes_images)
    second = None
    try:
        async with raw_producer(kafka_bootstrap) as producer:
            for i in range(3):
                await producer.send_and_wait(
                    f"{prefix}.requests.shapes_tf2",
                    image,
                    key=b"cam-dup",
                    headers=raw(correlation_id=f"d{i}", reply_to=reply_to),
                )
        await read_topic(kafka_bootstrap, reply_to, expect=3, timeout_s=60)
        assert first.proc is not None
        first.proc.kill()  # no commit, no goodbye
        first.proc.wait()
        second = ConsumerProcess(
            kafka_bootstrap, model_repository, prefix, tmp_path, group=group, extra=extra
        )
        second.start().wait_ready()
        records = await read_topic(kafka_bootstrap, reply_to, expect=6, timeout_s=120)
    finally:
        first.stop()
        if second is not None:
            second.stop()
    order = [json.loads(r.value)["correlation_id"] for r in records]
    assert order == ["d0", "d1", "d2", "d0", "d1", "d2"], order
    workers = [json.loads(r.value)["worker"] for r in records]
    assert workers[:3] != workers[3:]


@pytest.mark.asyncio
async def test_header_parsing_rules(
    worker: ConsumerProcess, shapes_images: tuple[Path, Truth]
) -> None:
    reply_to = f"{worker.prefix}.replies.{uuid.uuid4().hex[:8]}"
    await create_topic(worker.bootstrap, reply_to)
    image = image_with_objects(shapes_images)
    requests: dict[str, list[tuple[str, bytes]]] = {
        # whitespace around a correlation id or a number is ignored
        "ws": raw(correlation_id=" ws\t", confidence=" 50 ", predictions="\r\n5"),
        # a repeated header: the last value counts
        "last-5": [*raw(correlation_id="last-5", predictions="0"), *raw(predictions="5")],
        "last-0": [*raw(correlation_id="last-0", predictions="5"), *raw(predictions="0")],
        # an empty value is an absent header (the model's config.json applies)
        "empty": raw(correlation_id="empty", predictions="", confidence="  "),
        # number syntax: exponents yes; '+', '_' and non-ASCII digits no
        "exp": raw(correlation_id="exp", confidence="5e1"),
        "plus": raw(correlation_id="plus", confidence="+50"),
        "underscore": raw(correlation_id="underscore", predictions="1_0"),
        "non-ascii": raw(correlation_id="non-ascii", confidence="éé五十"),
    }
    async with raw_producer(worker.bootstrap) as producer:
        for headers in requests.values():
            await producer.send(
                f"{worker.prefix}.requests.shapes_tf2",
                image,
                headers=[*headers, ("reply-to", reply_to.encode())],
            )
        await producer.flush()
    records = await read_topic(worker.bootstrap, reply_to, expect=len(requests), timeout_s=120)
    answers = {cid: replies[0] for cid, replies in replies_by_id(records).items()}
    assert set(answers) == set(requests)

    def boxes(cid: str) -> int:
        assert answers[cid]["success"], answers[cid]
        return len(answers[cid]["data"]["bounding-boxes"])

    assert boxes("ws") >= 2
    assert boxes("last-5") >= 2 and boxes("last-0") == 0
    assert boxes("empty") >= 2 and boxes("exp") >= 2
    for cid in ("plus", "underscore", "non-ascii"):
        assert answers[cid]["error"]["code"] == "invalid_request", answers[cid]

    # The DLQ copy of the non-ASCII one: dlq-reason is valid UTF-8, the answer's message.
    dlq = await read_topic(
        worker.bootstrap,
        f"{worker.prefix}.dlq",
        expect=10**6,
        timeout_s=60,
        until=lambda recs: any(header_dict(r).get("correlation-id") == "non-ascii" for r in recs),
    )
    copy = next(r for r in dlq if header_dict(r).get("correlation-id") == "non-ascii")
    reason = dict(copy.headers)["dlq-reason"].decode("utf-8")  # raises if not UTF-8
    assert reason == answers["non-ascii"]["error"]["message"]
    assert "éé五十" in reason
