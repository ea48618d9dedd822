"""Embedded mode: the worker's pipeline inside the bridge, called directly.

An HTTP call becomes a `Request` and awaits the pipeline's `Answer`: exactly
the decoding threads, batching, engines and error decisions a Kafka worker
runs, with no topics, offsets or JSON in between. This is what `make run`
serves on a machine with no Kafka.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

from consumer.metrics import WorkerMetrics
from consumer.pipeline import Answer, Pipeline
from consumer.protocol import ModelState, Request
from consumer.registry import ModelRegistry
from consumer.spans import RequestSpans
from engines.errors import RequestTimeout
from http_bridge.backends import DetectCall, ModelInfo
from http_bridge.settings import BridgeSettings

log = logging.getLogger(__name__)


class EmbeddedBackend:
    def __init__(self, settings: BridgeSettings, metrics: WorkerMetrics) -> None:
        self.settings = settings
        self.registry = ModelRegistry.from_settings(settings)
        self.metrics = metrics
        self.pipeline = Pipeline(self.registry, settings, "embedded", metrics)
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

    async def detect(self, call: DetectCall) -> dict[str, Any]:
        name = call.model
        timeout = self.settings.answer_timeout_s
        request = Request(
            model=name,
            correlation_id=uuid.uuid4().hex,
            image=call.image,
            confidence=call.confidence,
            predictions=call.predictions,
            image_name=call.image_name,
            deadline_ms=int((time.time() + timeout) * 1000),
        )
        spans = RequestSpans(f"{name} detect")  # a child of the HTTP request's span
        try:
            answer = await asyncio.wait_for(
                asyncio.shield(self.pipeline.submit(request, spans)), timeout
            )
        except TimeoutError:
            spans.end(RequestTimeout("no answer in time"))
            raise RequestTimeout(f"model '{name}' did not answer within {timeout:g}s") from None
        spans.end(answer.error)
        if answer.error is not None:
            if answer.dead_letter:
                self._dead_letter(name, answer)
            raise answer.error
        return answer.reply.data or {}

    def _dead_letter(self, model: str, answer: Answer) -> None:
        assert answer.error is not None
        self.metrics.dlq.labels(model, answer.error.code).inc()
        log.warning(
            "dead letter",
            extra={"model": model, "code": answer.error.code, "error": answer.error.message},
        )

    async def ready(self) -> tuple[bool, dict[str, Any]]:
        models = {e.name: e.state.value for e in self.registry.entries()}
        ok = self._loaded and any(state == ModelState.READY.value for state in models.values())
        return ok, {"mode": "embedded", "models": models}
