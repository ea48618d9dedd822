"""Camera states on Kafka: where the bridge's live page learns how each camera is doing.

The gateway and the bridge are separate processes, often on separate machines;
the page already reads Kafka. So the gateway produces each camera's state
(connected or reconnecting with its last error, fps in and out; never a
password) to the compacted `<prefix>.cameras` topic, keyed by camera id, every
--states-interval-s, and the page's reader follows that topic with the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from consumer import kafka_io
from consumer.protocol import Topics
from consumer.settings import KafkaClientSettings
from engines.errors import TfstreamError
from producer_tools.camera_metrics import CameraState

log = logging.getLogger(__name__)


def states_topic(prefix: str) -> str:
    return f"{Topics(prefix).prefix}.cameras"


async def publish_states(
    settings: KafkaClientSettings,
    producer: AIOKafkaProducer,
    states: Callable[[], list[CameraState]],
    stop: asyncio.Event,
    interval_s: float | None = None,
) -> None:
    """Produce every camera's state until `stop`; a broker that refuses costs a warning,
    never the cameras."""
    topic = states_topic(settings.topic_prefix)
    interval = interval_s or float(getattr(settings, "states_interval_s", 2.0))
    try:
        await kafka_io.ensure_topics(settings, [kafka_io.TopicSpec(topic, compacted=True)])
    except (TfstreamError, KafkaError, OSError) as exc:
        log.warning("camera states not published", extra={"topic": topic, "error": repr(exc)})
        return
    while not stop.is_set():
        for state in states():
            try:
                await producer.send(
                    topic, json.dumps(state.as_json()).encode(), key=state.camera.encode()
                )
            except KafkaError as exc:
                log.warning("camera state not sent", extra={"error": repr(exc)})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)
