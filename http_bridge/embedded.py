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
from consumer.polling import poll_versions
from consumer.protocol import ModelFacts, ModelState, Request
from consumer.registry import ModelRegistry
from consumer.spans import RequestSpans
from consumer.supervision import Supervisor
from engines.errors import ModelUnavailable, RequestTimeout
from engines.tracing import tracing_active
from http_bridge.backends import DetectCall
from http_bridge.settings import BridgeSettings

log = logging.getLogger(__name__)

#: How often a request for a model still loading looks again.
LOADING_POLL_S = 0.05


class EmbeddedBackend:
    def __init__(
        self,
        settings: BridgeSettings,
        metrics: WorkerMetrics,
        supervisor: Supervisor | None = None,
        registry: ModelRegistry | None = None,
    ) -> None:
        """`registry`: default, the one `settings` describe."""
        self.settings = settings
        self.registry = registry or ModelRegistry.from_settings(settings)
        self.metrics = metrics
        self.supervisor = supervisor or Supervisor()
        self.pipeline = Pipeline(self.registry, settings, "embedded", metrics, self.supervisor)
        self._loaded = asyncio.Event()

    async def start(self) -> None:
        """Start serving at once: models load in the background (`--load-threads` at
        a time), so /docs and /health/live answer from the first second; a request
        for a model still loading waits for it within its timeout."""
        self.pipeline.start()
        self.registry.announce_loading()
        self.supervisor.start("load", self._load_all)
        if self.settings.poll_interval_s > 0:
            self.supervisor.start("poll", self._poll_loop)

    async def _load_all(self) -> None:
        entries = await asyncio.to_thread(self.registry.load_all)
        self._loaded.set()
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

    async def _poll_loop(self) -> None:
        """Roll in new version folders, beside the serving weights (registry.refresh)."""
        await self._loaded.wait()
        await poll_versions(self.registry, self.settings.poll_interval_s)

    async def _until_loaded(self, name: str, deadline_s: float) -> None:
        """Wait while `name` has no weights and is still loading (or not started)."""
        while time.monotonic() < deadline_s:
            entry = self.registry.entry(name)
            if entry is not None and entry.state is not ModelState.LOADING:
                return
            if entry is None and (self._loaded.is_set() or not self.registry.serves(name)):
                return
            await asyncio.sleep(LOADING_POLL_S)

    async def stop(self) -> None:
        await self.supervisor.stop()  # loading and polling
        await self.pipeline.close()

    def names(self) -> list[str]:
        return self.registry.served_names()

    def resolve(self, name_or_hash: str) -> str:
        return self.registry.resolve(name_or_hash)

    def info(self, name: str) -> ModelFacts:
        if not self.registry.serves(name):  # in the folder, left out by --models
            self.registry.spec(name)  # ModelNotFound, InvalidModelConfig first
            raise ModelUnavailable(f"model '{name}' is not served by this bridge (--models)")
        return self.registry.facts(name)

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
        # A child of the HTTP request's span; nothing to record or pass on without tracing.
        spans = RequestSpans(f"{name} detect") if tracing_active() else None
        started = time.monotonic()
        await self._until_loaded(name, started + timeout)
        try:
            answer = await asyncio.wait_for(
                asyncio.shield(self.pipeline.submit(request, spans)),
                max(0.0, timeout - (time.monotonic() - started)),
            )
        except TimeoutError:
            if spans is not None:
                spans.end(RequestTimeout("no answer in time"))
            raise RequestTimeout(f"model '{name}' did not answer within {timeout:g}s") from None
        if spans is not None:
            spans.end(answer.error)
        if answer.error is not None:
            if answer.dead_letter:
                self._dead_letter(name, answer)
            raise answer.error
        return {**(answer.reply.data or {}), "model_version": answer.reply.model_version}

    def _dead_letter(self, model: str, answer: Answer) -> None:
        assert answer.error is not None
        self.metrics.dlq.labels(model, answer.error.code).inc()
        log.warning(
            "dead letter",
            extra={"model": model, "code": answer.error.code, "error": answer.error.message},
        )

    async def ready(self) -> tuple[bool, dict[str, Any]]:
        models = {e.name: e.state.value for e in self.registry.entries()}
        ready = any(state == ModelState.READY.value for state in models.values())
        ok = self._loaded.is_set() and ready
        return ok, {"mode": "embedded", "models": models}
