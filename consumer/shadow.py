"""Shadow workers: a candidate model on live traffic, answering nobody.

`tfstream-consumer --shadow NAME` reads the same request topics as the serving
group, in a consumer group of its own (`<group>.shadow.<NAME>`): Kafka hands
every request to each group, so the shadow takes nothing from the serving
workers and never delays them; a slow shadow only lags. Its answers go to
`<prefix>.shadow.<NAME>.<model>` and nowhere else: no reply topic, no results
topic, no dead-letter copy, no announcement on `<prefix>.models` (clients never
pick it), and its metrics carry `role="shadow"`.

A shadow group with no committed position starts at the end of each request
topic (live traffic from now on) or, with `--shadow-from`, at the first request
at or after a time; once it has committed, a restart resumes there. Pipeline
rules are unchanged: deadlines, conflation, batching apply as in any worker.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Iterable, Iterator

from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric

from consumer import kafka_io
from consumer.answer_log import AnswerSink
from consumer.pipeline import Answer, Pipeline
from consumer.protocol import Topics
from consumer.records import Record, RecordAdapter
from consumer.spans import RequestSpans

log = logging.getLogger(__name__)


async def start_positions(
    consumer: AIOKafkaConsumer,
    assigned: Iterable[TopicPartition],
    from_ms: int | None,
    timeout_s: float,
) -> None:
    """Place partitions this group never committed: at their end, or at `from_ms`.

    Done at assignment, not left to `auto_offset_reset`, so that the position is
    fixed before the shadow says it is ready: a request sent after that is answered.

    Raises:
        ServiceUnavailable: `from_ms`'s offsets not known within `timeout_s`.
    """
    fresh = [tp for tp in assigned if await consumer.committed(tp) is None]
    if not fresh:
        return
    if from_ms is None:
        await consumer.seek_to_end(*fresh)
    else:
        await kafka_io.seek_to_time(consumer, fresh, from_ms, timeout_s)
    log.info(
        "shadow starts",
        extra={
            "partitions": sorted(f"{tp.topic}:{tp.partition}" for tp in fresh),
            "from_ms": from_ms,
        },
    )


class ShadowAdapter(RecordAdapter):
    """`RecordAdapter` whose every answer, success or error, goes to the shadow topic only."""

    def __init__(
        self, pipeline: Pipeline, topics: Topics, sink: AnswerSink, worker_id: str
    ) -> None:
        super().__init__(pipeline, topics, sink.outbox, worker_id)
        self.sink = sink

    def _sends(
        self, record: Record, model: str, reply_to: str, answer: Answer, spans: RequestSpans
    ) -> list[Awaitable[None]]:
        return [self.sink.write(record, model, answer.reply, None)]


class LabelledRegistry(CollectorRegistry):
    """A metrics registry that adds fixed labels to every sample it exposes, so a
    shadow's series (`role="shadow"`) never mix with the serving group's."""

    def __init__(self, labels: dict[str, str]) -> None:
        super().__init__()
        self.labels = labels

    def collect(self) -> Iterator[Metric]:
        for metric in super().collect():
            out = Metric(metric.name, metric.documentation, metric.type, metric.unit)
            out.samples = [
                sample._replace(labels={**sample.labels, **self.labels})
                for sample in metric.samples
            ]
            yield out


def shadow_registry(name: str) -> LabelledRegistry:
    return LabelledRegistry({"role": "shadow", "shadow": name})
