"""Kafka mode: every call is a request on the wire protocol, answered by workers.

Model facts (names, hashes, labels, config) come from the workers'
announcements, so the bridge needs no model folder. The broker may be away
when the bridge starts or later: calls answer 503 meanwhile, and the clients
reconnect by themselves when it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from engines.errors import NotAuthorized, ServiceUnavailable, TfstreamError
from http_bridge.backends import DetectCall, ModelInfo
from http_bridge.settings import BridgeSettings
from producer_tools.client import DetectClient
from producer_tools.directory import ModelDirectory

log = logging.getLogger(__name__)


class KafkaBackend:
    def __init__(self, settings: BridgeSettings) -> None:
        self.settings = settings
        self.client = DetectClient(
            settings, timeout_s=settings.answer_timeout_s, send_timeout_s=settings.send_timeout_s
        )
        self.directory = ModelDirectory(settings)
        self._started = asyncio.Event()
        self._starter: asyncio.Task[None] | None = None
        self._refused: NotAuthorized | None = None

    async def start(self) -> None:
        """Connect now if the broker is there, else keep trying in the background."""
        self._starter = asyncio.create_task(self._connect(), name="connect")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._started.wait()), 15)

    async def _connect(self) -> None:
        delay_s = 0.5
        while True:
            try:
                await self.client.start()
                await self.directory.start()
            except NotAuthorized as exc:
                # The bridge's own credentials: 503 for every call (not 403, which says
                # "this model is closed to the bridge"); retried, as ACLs can be granted live.
                self._refused = exc
                log.error("Kafka refused the bridge; retrying", extra={"error": exc.message})
            except ServiceUnavailable as exc:
                log.warning("Kafka not reachable yet; retrying", extra={"error": exc.message})
            else:
                self._refused = None
                self._started.set()
                log.info(
                    "connected to Kafka",
                    extra={
                        "bootstrap": self.settings.bootstrap,
                        "reply_topic": self.client.reply_topic,
                    },
                )
                return
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, 10)

    def _require_started(self) -> None:
        if not self._started.is_set():
            if self._refused is not None:
                raise ServiceUnavailable(f"Kafka refused the bridge: {self._refused.message}")
            raise ServiceUnavailable(f"Kafka at {self.settings.bootstrap} is not reachable yet")

    async def stop(self) -> None:
        if self._starter is not None:
            self._starter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._starter
        if self._started.is_set():
            await self.directory.stop()
            await self.client.stop()

    def names(self) -> list[str]:
        self._require_started()
        return self.directory.names()

    def resolve(self, name_or_hash: str) -> str:
        self._require_started()
        return self.directory.resolve(name_or_hash)

    def info(self, name: str) -> ModelInfo:
        self._require_started()
        view = self.directory.view(name)
        return ModelInfo(
            name=name,
            hash=view.hash,
            labels=view.labels,
            label_hashes=view.label_hashes,
            config=view.config,
        )

    async def load(self, name: str | None, force: bool = False) -> None:
        self._require_started()
        if name is not None:
            self.directory.view(name)  # unknown or unserved models answer at once
        reply = await self.client.load(name or "*", force, timeout_s=self.settings.answer_timeout_s)
        if reply.error is not None:
            raise reply.error

    async def detect(self, call: DetectCall) -> dict[str, Any]:
        self._require_started()
        self.directory.serving(call.model)  # no live worker: answer now, not after a timeout
        reply = await self.client.detect(
            call.model,
            call.image,
            confidence=call.confidence,
            predictions=call.predictions,
            image_name=call.image_name,
        )
        if reply.error is not None:
            raise reply.error
        return reply.data or {}

    async def ready(self) -> tuple[bool, dict[str, Any]]:
        if not self._started.is_set():
            broker = "not_authorized" if self._refused is not None else "unreachable"
            return False, {"mode": "kafka", "broker": broker}
        reachable = await self.client.reachable()
        served = [n for n in self.directory.names() if self._is_ready(n)]
        return reachable and bool(served), {
            "mode": "kafka",
            "broker": "reachable" if reachable else "unreachable",
            "models": served,
        }

    def _is_ready(self, name: str) -> bool:
        try:
            self.directory.serving(name)
        except TfstreamError:  # not found, not ready, or failed on every worker
            return False
        return True
