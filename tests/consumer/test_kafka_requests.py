"""Each request of consumer/kafka_requests.py (aiokafka internals) against a real broker.

What is checked is that each hand-declared request is accepted and its answer
parsed field by field: a shifted schema misreads the names, the error codes and
the operation bits (a topic allows Write, a group never does), and a refused
connection comes back as its cause.
"""

from __future__ import annotations

import asyncio
import socket
import time
import uuid

import pytest
from aiokafka import AIOKafkaConsumer

from consumer import kafka_io, kafka_requests
from consumer.kafka_io import TopicSpec
from consumer.settings import KafkaClientSettings

pytestmark = [pytest.mark.kafka]

UNKNOWN_TOPIC_OR_PARTITION = 3


def _settings(bootstrap: str) -> KafkaClientSettings:
    return KafkaClientSettings(bootstrap=bootstrap)


@pytest.mark.asyncio
async def test_metadata_v8_names_each_topic_with_its_error_and_operations(
    kafka_bootstrap: str,
) -> None:
    settings = _settings(kafka_bootstrap)
    present = f"requests-test-{uuid.uuid4().hex[:8]}"
    absent = f"{present}-absent"
    await kafka_io.ensure_topics(settings, [TopicSpec(present)])
    client = kafka_requests.client(settings.client_kwargs(), "test")
    await client.bootstrap()
    try:
        deadline = time.monotonic() + 30
        while True:  # a topic just created reaches the brokers' metadata a moment later
            answers = await kafka_requests.topic_operations(client, [present, absent])
            by_name = {a.name: a for a in answers}
            if by_name[present].error_code == 0 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
    finally:
        await client.close()
    assert set(by_name) == {present, absent}
    assert by_name[present].error_code == 0
    assert by_name[absent].error_code == UNKNOWN_TOPIC_OR_PARTITION
    assert by_name[present].operations != kafka_requests.NOT_COMPUTED  # KRaft computes them
    assert all(by_name[present].allows(op) for op in kafka_requests.OPERATIONS)


@pytest.mark.asyncio
async def test_describe_groups_v3_answers_for_the_group_asked(kafka_bootstrap: str) -> None:
    group = f"requests-test-{uuid.uuid4().hex[:8]}"
    topic = f"{group}-topic"
    settings = _settings(kafka_bootstrap)
    await kafka_io.ensure_topics(settings, [TopicSpec(topic)])
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=kafka_bootstrap, group_id=group)
    await consumer.start()  # a group that exists, with a member
    client = kafka_requests.client(settings.client_kwargs(), "test")
    await client.bootstrap()
    try:
        answer = await kafka_requests.group_operations(client, group)
    finally:
        await client.close()
        await consumer.stop()
    assert (answer.name, answer.error_code) == (group, 0)
    # A group's operations are Read, Delete, Describe...: never Write or Create.
    assert answer.allows("Read") and answer.allows("Describe")
    assert not answer.allows("Write") and not answer.allows("Create")


def test_bits_of_an_authorized_operations_field() -> None:
    write_only = kafka_requests.Authorized("t", 0, 1 << kafka_requests.OPERATIONS["Write"])
    assert write_only.allows("Write") and not write_only.allows("Read")
    unknown = kafka_requests.Authorized("t", 0, kafka_requests.NOT_COMPUTED)
    assert unknown.allows("Read")  # a broker without an authorizer allows everything


@pytest.mark.asyncio
async def test_one_connection_attempt_returns_its_failure(kafka_bootstrap: str) -> None:
    host, _, port = kafka_bootstrap.rpartition(":")
    kwargs = _settings(kafka_bootstrap).client_kwargs()
    assert await kafka_requests.connect_once(host, int(port), kwargs) is None
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        unused = closed.getsockname()[1]
    failure = await kafka_requests.connect_once("127.0.0.1", unused, kwargs, timeout_s=5)
    assert isinstance(failure, OSError), failure
