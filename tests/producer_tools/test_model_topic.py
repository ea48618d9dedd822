"""`wait_for_model_topic`'s rule on a list of topic names: wait until the model's
request topic exists, naming the models that are served meanwhile, and end with
model_not_found at the start timeout. The same rule against a real broker and
worker is in test_tools.py (`test_a_stream_started_before_any_worker_waits_for_its_topic`).
The Write check it makes on every attempt is stubbed here (no broker): it is
tested against a secured broker in test_kafka_security.py."""

from __future__ import annotations

import pytest

from consumer.protocol import Topics
from consumer.settings import KafkaClientSettings
from engines.errors import ModelNotFound, ServiceUnavailable
from producer_tools import model_topic
from producer_tools.model_topic import wait_for_model_topic

TOPICS = Topics("p")
SETTINGS = KafkaClientSettings(bootstrap="localhost:1", start_timeout_s=1)
#: Room for three attempts (0, 0.25, 0.75 s) on a machine that may stall.
PATIENT = KafkaClientSettings(bootstrap="localhost:1", start_timeout_s=10)


@pytest.fixture(autouse=True)
def writable(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, list[str]]]:
    """Every Write check passes, and is recorded."""
    checked: list[dict[str, list[str]]] = []

    async def check_access(_: KafkaClientSettings, topics: dict[str, list[str]]) -> None:
        checked.append(topics)

    monkeypatch.setattr(model_topic, "check_access", check_access)
    return checked


class Cluster:
    """Topic names as a cluster lists them, one list per call (the last one repeats)."""

    def __init__(self, *answers: set[str]) -> None:
        self.answers = list(answers)
        self.calls = 0

    async def list_topics(self) -> set[str]:
        self.calls += 1
        return self.answers[min(self.calls, len(self.answers)) - 1]


@pytest.mark.asyncio
async def test_waits_while_no_worker_created_a_request_topic(
    writable: list[dict[str, list[str]]],
) -> None:
    cluster = Cluster(set(), {"__consumer_offsets"}, {"p.requests.cars", "p.results.cars"})
    await wait_for_model_topic(cluster.list_topics, TOPICS, "cars", PATIENT)
    assert cluster.calls == 3
    # Write is checked again once the topic exists: before, a missing topic passes.
    assert writable == [{"p.requests.cars": ["Write"]}] * 3


@pytest.mark.asyncio
async def test_waits_while_other_workers_serve_other_models() -> None:
    """Workers come up one by one, each creating its own models' topics."""
    cluster = Cluster({"p.requests.cars"}, {"p.requests.cars", "p.requests.vans"})
    await wait_for_model_topic(cluster.list_topics, TOPICS, "vans", PATIENT)
    assert cluster.calls == 2


@pytest.mark.asyncio
async def test_a_model_no_worker_serves_ends_model_not_found_naming_the_served() -> None:
    cluster = Cluster({"p.requests.cars", "p.requests.vans", "q.requests.bikes"})
    with pytest.raises(ModelNotFound, match="serve cars, vans, not 'bikes'"):
        await wait_for_model_topic(cluster.list_topics, TOPICS, "bikes", SETTINGS)
    assert cluster.calls > 1  # it waited for a worker that might still come


@pytest.mark.asyncio
async def test_gives_up_at_the_start_timeout_saying_what_it_waited_for() -> None:
    cluster = Cluster({"q.requests.cars"})  # another prefix's workers do not count
    with pytest.raises(ModelNotFound, match=r"no worker created p\.requests\.cars within 1s"):
        await wait_for_model_topic(cluster.list_topics, TOPICS, "cars", SETTINGS)
    assert cluster.calls > 1


@pytest.mark.asyncio
async def test_a_broker_never_reached_stays_service_unavailable() -> None:
    async def unreachable() -> set[str]:
        raise ServiceUnavailable("cannot reach Kafka")

    with pytest.raises(ServiceUnavailable, match=r"a worker to create p\.requests\.cars"):
        await wait_for_model_topic(unreachable, TOPICS, "cars", SETTINGS)
