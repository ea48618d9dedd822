"""Embedded mode: the worker's pipeline inside the bridge, over an in-memory bus.

Requests go through exactly the code a Kafka worker runs (protocol headers,
decoding threads, batching, engines, reply encoding); only the outbox differs:
instead of a producer, replies resolve the waiting HTTP calls directly. This is
what `make run` serves on a machine with no Kafka.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import time
import uuid
from collections.abc import Awaitable
from typing import Any

from consumer.metrics import WorkerMetrics
from consumer.pipeline import Pipeline, Record
from consumer.protocol import (
    DLQ_REASON_CODE,
    Headers,
    ModelState,
    Reply,
    Request,
    Topics,
    header_map,
    with_trace,
)
from consumer.registry import ModelRegistry
from engines.errors import InvalidRequest, RequestTimeout
from engines.repository import ModelRepository
from http_bridge.backends import ModelInfo
from http_bridge.settings import BridgeSettings

log = logging.getLogger(__name__)

REPLY_TOPIC = "embedded.replies"


class MemoryOutbox:
    """Delivers replies to waiting futures; keeps the last dead letters for inspection."""

    def __init__(self, dlq_topic: str, keep_dead_letters: int = 100) -> None:
        self.waiting: dict[str, asyncio.Future[Reply]] = {}
        self.dlq_topic = dlq_topic
        self.dead_letters: collections.deque[dict[str, str]] = collections.deque(
            maxlen=keep_dead_letters
        )

    def send(
        self, topic: str, value: bytes | None, key: bytes | None, headers: Headers
    ) -> Awaitable[None]:
        if topic == self.dlq_topic:
            self.dead_letters.append(header_map(headers))
            log.warning("dead letter", extra={"code": header_map(headers).get(DLQ_REASON_CODE)})
        else:
            try:
                reply = Reply.from_json(value or b"")
            except InvalidRequest:
                reply = None
            future = self.waiting.pop(reply.correlation_id or "", None) if reply else None
            if future is not None and not future.done():
                future.set_result(reply)  # type: ignore[arg-type]
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


class EmbeddedBackend:
    def __init__(self, settings: BridgeSettings, metrics: WorkerMetrics) -> None:
        self.settings = settings
        self.repository = ModelRepository(settings.repository)
        self.registry = ModelRegistry(
            self.repository, settings.model_names(), settings.device, settings.simulate_batch_ms
        )
        self.topics = Topics("embedded")
        self.outbox = MemoryOutbox(self.topics.dlq)
        self.pipeline = Pipeline(
            self.registry, self.topics, self.outbox, settings, "embedded", metrics
        )
        self._offsets = itertools.count()
        self._loaded = False

    async def start(self) -> None:
        self.pipeline.start()
        entries = await asyncio.to_thread(self.registry.load_all)
        self._loaded = True
        for entry in entries:
            if entry.error:
                log.error(
                    "model not served",
                    extra={
                        "model": entry.name,
                        "code": entry.error.code,
                        "error": entry.error.message,
                    },
                )
        log.info(
            "embedded models ready",
            extra={"models": [e.name for e in entries if e.state is ModelState.READY]},
        )

    async def stop(self) -> None:
        await self.pipeline.close()

    def names(self) -> list[str]:
        return self.registry.served_names()

    def resolve(self, name_or_hash: str) -> str:
        return self.registry.resolve(name_or_hash)

    def info(self, name: str) -> ModelInfo:
        spec = self.registry.spec(name)
        return ModelInfo(
            name=name,
            hash=spec.hash,
            labels=[label for _, label in sorted(spec.labels.items())],
            label_hashes=spec.label_hashes(),
            config=spec.config.model_dump(mode="json"),
        )

    async def load(self, name: str | None, force: bool = False) -> None:
        if name is None:
            await asyncio.to_thread(self.registry.load_all)
            return
        entry = await asyncio.to_thread(self.registry.load, name, force)
        if entry.error is not None:
            raise entry.error

    async def detect(
        self,
        name: str,
        image: bytes,
        image_name: str | None,
        confidence: float | None,
        predictions: int | None,
    ) -> dict[str, Any]:
        timeout = self.settings.request_timeout_s
        request = Request(
            model=name,
            correlation_id=uuid.uuid4().hex,
            image=image,
            reply_to=REPLY_TOPIC,
            confidence=confidence,
            predictions=predictions,
            image_name=image_name,
            deadline_ms=int((time.time() + timeout) * 1000),
        )
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self.outbox.waiting[request.correlation_id] = future
        record = Record(
            self.topics.requests(name),
            0,
            next(self._offsets),
            None,
            image,
            tuple(with_trace(request.headers())),
        )
        self.pipeline.submit(record)
        try:
            reply = await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise RequestTimeout(f"model '{name}' did not answer within {timeout:g}s") from None
        finally:
            self.outbox.waiting.pop(request.correlation_id, None)
        if reply.error is not None:
            raise reply.error
        return reply.data or {}

    async def ready(self) -> tuple[bool, dict[str, Any]]:
        models = {e.name: e.state.value for e in self.registry.entries()}
        ok = self._loaded and any(state == ModelState.READY.value for state in models.values())
        return ok, {"mode": "embedded", "models": models}
