"""The topics a worker writes and reads: which, creating them, and its permissions.

At start the worker creates what it needs (DLQ, announcements, control, its
models' request and results topics, its answer-log or shadow topics) and checks
its ACLs, naming every one missing, rather than fail record by record. Later,
a model folder new to the repository gets its topics before it is served, and a
log topic first needed for a model this worker does not serve is created when
its first record needs it.
"""

from __future__ import annotations

import logging

from aiokafka.errors import KafkaError

from consumer import kafka_io
from consumer.access import check_access
from consumer.answer_log import log_topic
from consumer.protocol import Topics
from consumer.settings import ConsumerSettings
from engines.errors import ReplyUndeliverable, TfstreamError

log = logging.getLogger(__name__)


class WorkerTopics:
    def __init__(self, settings: ConsumerSettings) -> None:
        self.settings = settings
        self.topics = Topics(settings.topic_prefix)

    def at_start(self, served: list[str]) -> list[kafka_io.TopicSpec]:
        s = self.settings
        return [
            kafka_io.TopicSpec(self.topics.dlq, s.partitions),
            kafka_io.announcements_topic(self.topics.models, s.announce_forget_ms),
            kafka_io.TopicSpec(self.topics.control, 1),
            *self.of_models(served),
            *self.of_tracking(served),
            *(kafka_io.TopicSpec(topic, s.partitions) for topic in self.logs(served)),
        ]

    def of_models(self, models: list[str]) -> list[kafka_io.TopicSpec]:
        """The request and results topics of `models`."""
        p = self.settings.partitions
        return [kafka_io.TopicSpec(self.topics.requests(m), p) for m in models] + [
            kafka_io.TopicSpec(self.topics.results(m), p) for m in models
        ]

    @property
    def tracks(self) -> bool:
        """Whether this worker tracks cameras (never a shadow: it must not write state)."""
        return self.settings.tracking and not self.settings.shadow

    def of_tracking(self, models: list[str]) -> list[kafka_io.TopicSpec]:
        """The cameras topic and `models`' state and events topics, when tracking. The
        state topic has the request topic's partition count: a camera's state goes to
        the partition number of its requests."""
        if not self.tracks:
            return []
        p = self.settings.partitions
        return [
            kafka_io.TopicSpec(self.topics.zones, 1, compacted=True),
            *(kafka_io.TopicSpec(self.topics.state(m), p, compacted=True) for m in models),
            *(kafka_io.TopicSpec(self.topics.events(m), p) for m in models),
        ]

    def logs(self, served: list[str]) -> list[str]:
        """The answer-log (`--answer-log`) or shadow (`--shadow`) topics of `served`."""
        s = self.settings
        if not (s.shadow or s.answer_log):
            return []
        return [log_topic(self.topics, m, s.shadow or None) for m in served]

    async def create(self, specs: list[kafka_io.TopicSpec]) -> None:
        await kafka_io.ensure_topics(self.settings, specs, self.settings.replication_factor)

    async def check_access(self, served: list[str]) -> None:
        """Refuse to start, naming every missing ACL.

        Replies go to clients' `<prefix>.replies.*` topics, which come and go: Write
        there cannot be checked ahead; a refused reply goes to the results topic.
        """
        needs: dict[str, list[str]] = {}
        shadow = bool(self.settings.shadow)
        if not shadow:
            needs[self.topics.dlq] = ["Write"]
            needs[self.topics.models] = ["Write"]
            needs[self.topics.control] = ["Read"]
        for model in served:
            needs[self.topics.requests(model)] = ["Read"]
            if not shadow:
                needs[self.topics.results(model)] = ["Write"]
        for topic in self.logs(served):
            needs[topic] = ["Write"]
        if self.tracks:
            needs[self.topics.zones] = ["Read"]
            for model in served:
                needs[self.topics.state(model)] = ["Read", "Write"]
                needs[self.topics.events(model)] = ["Write"]
        await check_access(self.settings, needs, self.settings.consumer_group())

    async def ensure_log(self, topic: str) -> None:
        """Create a log topic first needed after start (a model this worker does not
        serve was asked for).

        Raises:
            ReplyUndeliverable: the broker refused (no Create ACL) or is away; the
                answer log tries again with its next attempt.
        """
        try:
            await self.create([kafka_io.TopicSpec(topic, self.settings.partitions)])
        except (KafkaError, TfstreamError, OSError) as exc:
            reason = exc.message if isinstance(exc, TfstreamError) else repr(exc)
            log.warning("cannot create topic", extra={"topic": topic, "error": reason})
            raise ReplyUndeliverable(f"cannot create topic '{topic}': {reason}") from exc

    async def prepare_models(self, fresh: list[str]) -> bool:
        """A model folder new to a worker serving every model gets its topics first;
        False when that failed (the next poll tries again)."""
        try:
            await self.create(self.of_models(fresh) + self.of_tracking(fresh))
        except (KafkaError, TfstreamError, OSError) as exc:
            log.warning("cannot create topics", extra={"models": fresh, "error": repr(exc)})
            return False
        return True
