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
import os
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Metric
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from consumer.protocol import ModelFacts
from consumer.startup import retrying, until_ready
from consumer.supervision import Supervisor
from engines.errors import (
    ModelNotFound,
    ModelUnavailable,
    NotAuthorized,
    RequestTimeout,
    ServiceUnavailable,
    TfstreamError,
)
from http_bridge.backends import DetectCall
from http_bridge.settings import BridgeSettings
from producer_tools.client import DetectClient
from producer_tools.directory import ModelDirectory

log = logging.getLogger(__name__)

#: First wait after the broker refused the bridge's credentials (doubling up to 10 s).
CONNECT_FIRST_DELAY_S = 0.5


class ReplyCounts(Collector):
    """The reply client's counts as Prometheus counters, read when scraped. Above all
    the duplicates: a second answer to one HTTP call (at-least-once delivery after a
    worker died) is dropped here, so only this counter shows that it happened."""

    def __init__(self, client: DetectClient) -> None:
        self.client = client

    def collect(self) -> Iterator[Metric]:
        stats = self.client.stats
        sent = CounterMetricFamily(
            "tfstream_bridge_requests_sent", "Requests and commands the bridge sent to Kafka"
        )
        sent.add_metric([], stats.sent)
        replies = CounterMetricFamily(
            "tfstream_bridge_replies",
            "Replies the bridge read: answered (a waiting call took it), or duplicate (for a "
            "call already answered or given up on: dropped)",
            labels=["outcome"],
        )
        replies.add_metric(["answered"], stats.answered)
        replies.add_metric(["duplicate"], stats.duplicates)
        timed_out = CounterMetricFamily(
            "tfstream_bridge_replies_timed_out", "Calls that had no reply within their timeout"
        )
        timed_out.add_metric([], stats.timed_out)
        yield from (sent, replies, timed_out)


class KafkaBackend:
    def __init__(
        self,
        settings: BridgeSettings,
        supervisor: Supervisor | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        """`registry`: where the reply counts are exposed (the app's /metrics)."""
        self.settings = settings
        self.supervisor = supervisor or Supervisor()
        self.gave_up: TfstreamError | None = None
        """Set when Kafka was not ready within `start_timeout_s`: the process exits 1."""
        self.on_give_up: Callable[[], None] | None = None
        """How to stop the server then (http_bridge.cli); default: SIGTERM to itself."""
        self.client = DetectClient(
            settings, timeout_s=settings.answer_timeout_s, send_timeout_s=settings.send_timeout_s
        )
        self.directory = ModelDirectory(settings)
        if registry is not None:
            registry.register(ReplyCounts(self.client))
        self._started = asyncio.Event()
        self._starter: asyncio.Task[None] | None = None
        self._refused: NotAuthorized | None = None

    async def start(self) -> None:
        """Connect now if the broker is there, else keep trying in the background
        (readiness false meanwhile) until `start_timeout_s`, then exit 1."""
        self._starter = self.supervisor.start("connect", self._connect)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._started.wait()), 15)

    async def _connect(self) -> None:
        """Each step retries on its own (`until_ready`) within one `start_timeout_s`;
        a ServiceUnavailable out of one has waited that long, or was a refusal (an
        untrusted certificate). Only refused credentials are tried again here,
        without end: ACLs can be granted while the bridge runs. Each such round
        gets a fresh `start_timeout_s` (the broker answered, so it is there), and
        starts only what is not started yet: a client whose announcements were
        refused stays up."""
        deadline = time.monotonic() + self.settings.start_timeout_s

        async def connect() -> None:
            if self.client.reader is None:
                await self.client.start(deadline)
            await until_ready(
                "reading announcements", self.directory.start, self.settings, deadline
            )

        async def refused(exc: BaseException, delay_s: float) -> None:
            nonlocal deadline
            assert isinstance(exc, NotAuthorized)
            # The bridge's own credentials: 503 for every call (not 403, which says
            # "this model is closed to the bridge").
            self._refused = exc
            log.error("Kafka refused the bridge; retrying", extra={"error": exc.message})
            deadline = time.monotonic() + delay_s + self.settings.start_timeout_s

        try:
            await retrying(connect, NotAuthorized, refused, CONNECT_FIRST_DELAY_S, 10.0)
        except ServiceUnavailable as exc:
            self._give_up(exc)
            return
        self._refused = None
        self._started.set()
        self.supervisor.watch("replies", self.client.reader)
        self.supervisor.watch("directory", self.directory.follower)
        log.info(
            "connected to Kafka",
            extra={"bootstrap": self.settings.bootstrap, "reply_topic": self.client.reply_topic},
        )

    def _give_up(self, error: TfstreamError) -> None:
        """Kafka not ready in time, or an untrusted certificate: stop the server; the
        command exits 1 with one line (http_bridge.cli)."""
        self.gave_up = error  # its message says how long it waited, and for what
        log.error("giving up on Kafka", extra={"error": self.gave_up.message})
        if self.on_give_up is not None:
            self.on_give_up()
        else:
            os.kill(os.getpid(), signal.SIGTERM)

    def _require_started(self) -> None:
        if not self._started.is_set():
            if self._refused is not None:
                raise ServiceUnavailable(f"Kafka refused the bridge: {self._refused.message}")
            raise ServiceUnavailable(f"Kafka at {self.settings.bootstrap} is not reachable yet")
        stopped = self._stopped_reading()
        if stopped:
            # Liveness is false (the supervisor saw it die): answer at once, never from
            # announcements that no longer change, until the process is restarted.
            raise ServiceUnavailable(f"the bridge stopped reading {stopped}; it needs a restart")

    def _stopped_reading(self) -> str:
        """What the bridge no longer reads ('' while both readers run): a reader ends
        only by an unexpected exception (or `stop`)."""
        for what, task in (
            ("the workers' announcements", self.directory.follower),
            ("its replies", self.client.reader),
        ):
            if task is not None and task.done():
                return what
        return ""

    async def stop(self) -> None:
        """Stop whatever started, also when the start never finished (the broker slow
        or refusing, a shutdown during start-up): the reply client may be up, its
        reader running and its reply topic made, while announcements are still awaited."""
        if self._starter is not None:
            self._starter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._starter
        await self.directory.stop()
        await self.client.stop()

    def names(self) -> list[str]:
        self._require_started()
        return self.directory.names()

    def resolve(self, name_or_hash: str) -> str:
        self._require_started()
        try:
            return self.directory.resolve(name_or_hash)
        except ModelNotFound:
            if self.directory.expected(name_or_hash):  # its request topic exists
                return name_or_hash
            raise

    def info(self, name: str) -> ModelFacts:
        self._require_started()
        return self.directory.view(name)

    async def load(self, name: str | None, force: bool = False) -> None:
        self._require_started()
        if name is not None:
            self.directory.view(name)  # unknown or unserved models answer at once
        reply = await self.client.load(name or "*", force, timeout_s=self.settings.answer_timeout_s)
        if reply.error is not None:
            raise reply.error

    async def detect(self, call: DetectCall) -> dict[str, Any]:
        """The waiting rule: a model some worker announced (or whose request topic
        exists) gets its request sent even while no worker is ready (a rolling
        update, a worker loading): it waits in Kafka for the next one, bounded by
        the request timeout, and only then answers 503 with Retry-After. A model
        nobody ever announced and without a request topic is 404 at once, and one
        that failed to load on every live worker answers that error at once (the
        404 is `resolve`'s)."""
        self._require_started()
        name = call.model
        failed = self.directory.failed_everywhere(name)
        if failed is not None:
            raise failed
        try:
            reply = await self.client.detect(
                name,
                call.image,
                confidence=call.confidence,
                predictions=call.predictions,
                image_name=call.image_name,
            )
        except RequestTimeout:
            if not self._is_ready(name):
                raise ModelUnavailable(
                    f"no worker served model '{name}' within "
                    f"{self.settings.answer_timeout_s:g}s; try again later"
                ) from None
            raise
        if reply.error is not None:
            raise reply.error
        return {**(reply.data or {}), "model_version": reply.model_version}

    async def ready(self) -> tuple[bool, dict[str, Any]]:
        if not self._started.is_set():
            broker = "not_authorized" if self._refused is not None else "unreachable"
            return False, {"mode": "kafka", "broker": broker}
        stopped = self._stopped_reading()
        if stopped:
            return False, {"mode": "kafka", "stopped_reading": stopped}
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
