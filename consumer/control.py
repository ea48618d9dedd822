"""Commands on `<prefix>.control`: every worker reads every command, outside any
consumer group, from the moment it starts (docs/protocol.md, "Loading models")."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from consumer import kafka_io
from consumer.announcements import Announcer
from consumer.protocol import Control, ControlCommand, Reply, Topics
from consumer.registry import ModelRegistry
from consumer.settings import KafkaClientSettings
from engines.errors import InvalidRequest, TfstreamError

log = logging.getLogger(__name__)


class ControlFollower:
    def __init__(
        self,
        settings: KafkaClientSettings,
        registry: ModelRegistry,
        announcer: Announcer,
        producer: AIOKafkaProducer,
        worker_id: str,
    ) -> None:
        self.settings = settings
        self.topics = Topics(settings.topic_prefix)
        self.registry = registry
        self.announcer = announcer
        self.producer = producer
        self.worker_id = worker_id

    async def loop(self) -> None:
        control = kafka_io.consumer(
            self.settings, "control", group_id=None, auto_offset_reset="latest"
        )
        control.subscribe([self.topics.control])
        await control.start()
        try:
            async for message in control:
                try:
                    command = Control.from_json(message.value or b"")
                except InvalidRequest as exc:
                    log.warning("bad control command", extra={"error": exc.message})
                    continue
                await self.on_command(command)
        finally:
            await control.stop()

    async def on_command(self, command: Control) -> None:
        """Load what the command names; answer once: the model's state, or for '*'
        every served model's state (one broken model does not fail the others)."""
        if command.command is not ControlCommand.LOAD:
            return
        names = self.registry.served_names() if command.model == "*" else [command.model]
        states: dict[str, str] = {}
        error: TfstreamError | None = None
        for name in names:
            try:
                entry = await asyncio.to_thread(self.registry.load, name, command.force)
            except TfstreamError as exc:
                error = exc
                continue
            await self.announcer.announce(entry)
            states[name] = entry.state.value
            error = error or (entry.error if command.model != "*" else None)
        if command.reply_to:
            reply = Reply(
                command.correlation_id,
                command.model,
                data=None if error else {"models": states},
                error=error,
                worker=self.worker_id,
            )
            with contextlib.suppress(KafkaError):
                await self.producer.send_and_wait(
                    command.reply_to, reply.to_json(), headers=reply.headers()
                )
