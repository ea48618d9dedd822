"""The models the workers serve, as they announce them on `<prefix>.models`.

The bridge answers `/models`, labels, config and hashes from here, never from a
model folder of its own, and refuses at once a request for a model that no
live worker serves instead of letting it time out.

Memory stays bounded: a record older than its `forget_ms` (a worker that stopped
or died that long ago) is dropped, as the topic itself deletes it, and a model
known only from such records, or only from a request topic seen for longer
than `forget_ms`, answers 404 again (docs/protocol.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import replace

from aiokafka.errors import KafkaError

from consumer import kafka_io
from consumer.protocol import DEFAULT_FORGET_MS, Announcement, ModelFacts, ModelState, Topics
from consumer.settings import KafkaClientSettings
from engines.catalogue import Catalogue
from engines.errors import ModelNotFound, ModelUnavailable, TfstreamError

log = logging.getLogger(__name__)

#: How often the topic list is read (for `expected`: a request topic with no announcement).
TOPICS_REFRESH_S = 5.0


class ModelDirectory(Catalogue):
    def __init__(self, settings: KafkaClientSettings, forget_ms: int = DEFAULT_FORGET_MS) -> None:
        """`forget_ms`: how long a request topic alone (no announcement of its model)
        makes requests wait; the workers' `--announce-forget-ms`."""
        self.settings = settings
        self.topics = Topics(settings.topic_prefix)
        self.forget_ms = forget_ms
        self._latest: dict[bytes, Announcement] = {}
        self._topics: dict[str, float] = {}
        """Request topics that exist, with when this directory first saw each
        (`time.monotonic()`)."""
        self._caught_up = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self, timeout_s: float = 10.0) -> None:
        """Read the compacted topic from the start; return once caught up (or after `timeout_s`).

        Subscribing without a group gets every partition, and the topic too once
        the first worker creates it.
        """
        self._consumer = kafka_io.consumer(
            self.settings,
            "directory",
            group_id=None,
            auto_offset_reset="earliest",
            metadata_max_age_ms=2000,
        )
        self._consumer.subscribe([self.topics.models])
        await kafka_io.started(self._consumer)  # stopped again if it fails: start may be retried
        self._task = asyncio.create_task(self._follow(), name="directory")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._caught_up.wait(), timeout_s)

    @property
    def follower(self) -> asyncio.Task[None] | None:
        """The background task reading announcements (for a supervisor to watch: an
        exception that ends it is its to log and count; a follower that is done no
        longer updates anything here)."""
        return self._task

    async def stop(self) -> None:
        """Also after a start that never finished (or never began)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):  # reported already
                await self._task
        consumer = getattr(self, "_consumer", None)
        if consumer is not None:
            with contextlib.suppress(KafkaError, OSError):  # the broker may be gone
                await consumer.stop()

    async def _follow(self) -> None:
        next_topics_s = 0.0
        async for records in kafka_io.follow(self._consumer, "announcements"):
            for record in records:
                self._apply(record.key, record.value)
            self._forget()
            if not self._caught_up.is_set() and await self._at_end():
                self._caught_up.set()
            if time.monotonic() >= next_topics_s:  # request topics of never-announced models
                next_topics_s = time.monotonic() + TOPICS_REFRESH_S
                with contextlib.suppress(KafkaError, OSError):
                    self._seen_topics(await self._consumer.topics())

    def _seen_topics(self, names: set[str]) -> None:
        now = time.monotonic()
        self._topics = {name: self._topics.get(name, now) for name in names}

    def _forget(self) -> None:
        """Drop records older than their `forget_ms`: the map holds only workers
        seen lately, however many came and went."""
        now = time.time() * 1000
        for key in [k for k, a in self._latest.items() if a.forgotten(now)]:
            del self._latest[key]

    async def _at_end(self) -> bool:
        """Whether every assigned partition was read up to its end (true with none)."""
        for tp in self._consumer.assignment():
            highwater = self._consumer.highwater(tp)
            if highwater is None or await self._consumer.position(tp) < highwater:
                return False
        return True

    def _apply(self, key: bytes | None, value: bytes | None) -> None:
        if key is None:
            return
        if value is None:  # tombstone: a worker left cleanly
            self._latest.pop(key, None)
            return
        try:
            self._latest[key] = Announcement.from_json(value)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring a malformed announcement", extra={"error": repr(exc)})

    def _live(self) -> list[Announcement]:
        now = time.time() * 1000
        return [a for a in self._latest.values() if a.alive(now)]

    def _remembered(self) -> list[Announcement]:
        now = time.time() * 1000
        return [a for a in list(self._latest.values()) if not a.forgotten(now)]

    def names(self) -> list[str]:
        """Models announced by at least one live worker, whatever their state."""
        return sorted({a.facts.name for a in self._live()})

    def known(self) -> Iterator[str]:
        """Every model announced within its `forget_ms`: a stopped one resolves, and
        waits in Kafka."""
        return (a.facts.name for a in self._remembered())

    def ever_announced(self, name: str) -> bool:
        """Whether a worker announced `name` within the record's `forget_ms`."""
        return any(a.facts.name == name for a in self._remembered())

    def view(self, name: str) -> ModelFacts:
        """The model's live view: the newest version ready on some worker; else, while
        any worker still loads it, `loading` (even where another failed); else failed.

        Raises:
            ModelNotFound: no worker ever announced it.
            ModelUnavailable: it was announced, but no live worker has it now.
        """
        live = [a for a in self._live() if a.facts.name == name]
        if not live:
            if self.ever_announced(name):
                raise ModelUnavailable(f"no worker serves model '{name}' at the moment")
            raise ModelNotFound(f"model '{name}' does not exist (no worker announces it)")
        # Ready anywhere serves; else loading anywhere may still serve (requests wait
        # for it: `failed_everywhere` is None), so a failure elsewhere is not the answer.
        ready = [a for a in live if a.facts.state is ModelState.READY]
        loading = [a for a in live if a.facts.state is ModelState.LOADING]
        best = max(ready or loading or live, key=lambda a: (a.facts.version, a.updated_ms))
        if ready:
            return replace(best.facts, error=None)
        return replace(best.facts, version=0, fingerprint="")

    def expected(self, name: str) -> bool:
        """Whether requests for `name` should wait in Kafka for a worker: some worker
        announced it within `forget_ms` (even one that stopped, or whose announcement
        aged out), or its request topic exists and was first seen less than
        `forget_ms` ago (a worker that made it has not announced yet)."""
        if self.ever_announced(name):
            return True
        seen_s = self._topics.get(self.topics.requests(name))
        return seen_s is not None and (time.monotonic() - seen_s) * 1000 < self.forget_ms

    def failed_everywhere(self, name: str) -> TfstreamError | None:
        """The workers' error when every live worker failed to load `name` (and none is
        loading or ready): waiting would not help, the error is the answer."""
        live = [a for a in self._live() if a.facts.name == name]
        if live and all(a.facts.state is ModelState.FAILED for a in live):
            error = max(live, key=lambda a: a.updated_ms).facts.error
            return TfstreamError.from_dict(error) if error else None
        return None

    def serving(self, name: str) -> ModelFacts:
        """The view of a model that can take requests now.

        Raises:
            ModelNotFound, ModelUnavailable: see `view`.
            TfstreamError: the workers' own error for it (e.g. model_load_failed).
        """
        view = self.view(name)
        if view.state is ModelState.READY:
            return view
        if view.error:
            raise TfstreamError.from_dict(view.error)
        raise ModelUnavailable(f"model '{name}' is not ready on any worker ({view.state.value})")
