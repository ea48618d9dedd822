"""How far behind a worker is, per model: the figures an autoscaler reads.

`tfstream_lag` is what waits unfetched on the partitions assigned now,
`tfstream_backlog_seconds` that plus the requests in flight, divided by the
pace measured (`consumer.metrics`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError

from consumer.metrics import WorkerMetrics
from consumer.offsets import OffsetTracker
from consumer.protocol import Topics
from consumer.registry import ModelRegistry

#: How often lag and backlog metrics are refreshed.
LAG_INTERVAL_S = 2.0
POSITION_TIMEOUT_S = 1.0


class LagReporter:
    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        topics: Topics,
        registry: ModelRegistry,
        metrics: WorkerMetrics,
        offsets: OffsetTracker,
        inflight: Callable[[], int],
    ) -> None:
        self.consumer = consumer
        self.topics = topics
        self.registry = registry
        self.metrics = metrics
        self.offsets = offsets
        self.inflight = inflight
        self._models: set[str] = set()

    async def loop(self) -> None:
        while True:
            await asyncio.sleep(LAG_INTERVAL_S)
            self.refresh(await self.lag())

    async def lag(self) -> dict[str, int]:
        """Unfetched requests per model over the partitions assigned now.

        A rebalance may take a partition away during any `await`, and aiokafka's
        `highwater` asserts that the partition is still assigned: it is read only
        right after checking that, with no `await` in between.
        """
        lag: dict[str, int] = defaultdict(int)
        for tp in list(self.consumer.assignment()):
            if tp not in self.consumer.assignment():  # moved away while we awaited
                continue
            highwater = self.consumer.highwater(tp)
            if highwater is None:
                continue
            with contextlib.suppress(KafkaError, TimeoutError):  # a partition moving away
                position = await asyncio.wait_for(self.consumer.position(tp), POSITION_TIMEOUT_S)
                lag[self.topics.model_of(tp.topic)] += max(0, highwater - position)
        return lag

    def refresh(self, lag: dict[str, int]) -> None:
        """Set lag and backlog per model; remove the label sets of models gone."""
        models = set(lag) | {e.name for e in self.registry.entries()}
        for gone in self._models - models:
            for gauge in (self.metrics.lag, self.metrics.backlog_seconds, self.metrics.throughput):
                with contextlib.suppress(KeyError):
                    gauge.remove(gone)
        self._models = models
        assignment = self.consumer.assignment()
        for model in models:
            inflight = self.offsets.pending(
                {tp for tp in assignment if self.topics.model_of(tp.topic) == model}
            )
            self.metrics.lag.labels(model).set(lag.get(model, 0))
            self.metrics.set_backlog(model, lag.get(model, 0) + inflight)
        self.metrics.inflight.set(self.inflight())
