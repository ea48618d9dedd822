"""What a worker says about its models on `<prefix>.models` (docs/protocol.md).

Each model is announced `loading` before it loads, after every load, and again
every `announce_ttl_ms / 3` so that readers know the worker is alive; at a clean
shutdown, `stopped`. Once `stopped` is said, nothing else is: a re-announcement
or a reload finishing late must not tell the bridges the model is ready on a
worker that has gone.

The `tfstream_model_info` gauge carries the same facts for Prometheus.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import replace

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from consumer.metrics import WorkerMetrics
from consumer.protocol import ModelState, Topics, announcement_key
from consumer.registry import Entry, ModelRegistry

log = logging.getLogger(__name__)


class Announcer:
    def __init__(
        self,
        registry: ModelRegistry,
        metrics: WorkerMetrics,
        topics: Topics,
        worker_id: str,
        ttl_ms: int,
        forget_ms: int,
        silent: bool = False,
    ) -> None:
        """`silent`: keep the metric, announce nothing (a shadow serves nobody)."""
        self.registry = registry
        self.metrics = metrics
        self.topics = topics
        self.worker_id = worker_id
        self.ttl_ms = ttl_ms
        self.forget_ms = forget_ms
        self.silent = silent
        self.producer: AIOKafkaProducer | None = None
        """Set once connected; nothing is sent before."""
        self._info: dict[str, tuple[str, ...]] = {}
        self._stopped = False

    async def announce(self, entry: Entry) -> None:
        if self._stopped and entry.state is not ModelState.STOPPED:
            return  # late news from a loop or a load: the worker has said goodbye
        labels = (
            entry.name,
            entry.state.value,
            entry.detector.device if entry.detector else "",
            entry.spec.engine.value if entry.spec else "",
            str(entry.version),
        )
        previous = self._info.get(entry.name)
        if previous is not None and previous != labels:  # one label set per model, the current
            with contextlib.suppress(KeyError):
                self.metrics.model_info.remove(*previous)
        self._info[entry.name] = labels
        self.metrics.model_info.labels(*labels).set(1)
        if self.silent or self.producer is None:
            return
        announcement = replace(
            self.registry.announcement(entry, self.worker_id, self.ttl_ms),
            forget_ms=self.forget_ms,
        )
        try:
            await self.producer.send_and_wait(
                self.topics.models,
                announcement.to_json(),
                key=announcement_key(entry.name, self.worker_id),
            )
        except KafkaError as exc:
            log.warning("announcement failed", extra={"model": entry.name, "error": repr(exc)})

    async def every(self, entries: list[Entry]) -> None:
        for entry in entries:
            await self.announce(entry)

    async def loop(self) -> None:
        """Re-announce every model every third of the TTL."""
        while True:
            await asyncio.sleep(self.ttl_ms / 3000)
            await self.every(self.registry.entries())

    async def stopped(self) -> None:
        """Say goodbye: `stopped`, not a tombstone, for each model. The model still
        exists, and a bridge keeps letting its requests wait in Kafka for the next
        worker until the record is older than `forget_ms` (docs/protocol.md)."""
        self._stopped = True
        await self.every([replace(e, state=ModelState.STOPPED) for e in self.registry.entries()])
