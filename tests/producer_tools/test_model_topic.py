"""`wait_for_model_topic`'s rule on a list of topic names: wait while no worker has
created any request topic under the prefix, fail at once when workers serve
other models. The same rule against a real broker and worker is in
test_tools.py (`test_a_stream_started_before_any_worker_waits_for_its_topic`)."""

from __future__ import annotations

import pytest

from consumer.protocol import Topics
from consumer.settings import KafkaClientSettings
from engines.errors import ModelNotFound, ServiceUnavailable
from producer_tools.model_topic import wait_for_model_topic

TOPICS = Topics("p")
SETTINGS = KafkaClientSettings(bootstrap="localhost:1", start_timeout_s=1)


class Cluster:
    """Topic names as a cluster lists them, one list per call (the last one repeats)."""

    def __init__(self, *answers: set[str]) -> None:
        self.answers = list(answers)
        self.calls = 0

    async def list_topics(self) -> set[str]:
        self.calls += 1
        return self.answers[min(self.calls, len(self.answers)) - 1]


@pytest.mark.asyncio
async def test_waits_while_no_worker_created_a_request_topic() -> None:
    cluster = Cluster(set(), {"__consumer_offsets"}, {"p.requests.cars", "p.results.cars"})
    await wait_for_model_topic(cluster.list_topics, TOPICS, "cars", SETTINGS)
    assert cluster.calls == 3


@pytest.mark.asyncio
async def test_a_model_no_worker_serves_fails_at_once() -> None:
    cluster = Cluster({"p.requests.cars", "p.requests.vans", "q.requests.bikes"})
    with pytest.raises(ModelNotFound, match="serve cars, vans, not 'bikes'"):
        await wait_for_model_topic(cluster.list_topics, TOPICS, "bikes", SETTINGS)
    assert cluster.calls == 1


@pytest.mark.asyncio
async def test_gives_up_at_the_start_timeout_saying_what_it_waited_for() -> None:
    cluster = Cluster({"q.requests.cars"})  # another prefix's workers do not count
    with pytest.raises(ServiceUnavailable, match=r"a worker to create p\.requests\.cars"):
        await wait_for_model_topic(cluster.list_topics, TOPICS, "cars", SETTINGS)
    assert cluster.calls > 1
