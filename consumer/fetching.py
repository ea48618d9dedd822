"""The fetch loop: at most `--max-inflight` unanswered records in hand, each handed
to the pipeline through a `RecordAdapter`, its offset finished once its answer is
written.

An answer that could not be written even to the DLQ (`AnswerDropped`) is
finished too: holding it would freeze its partition's commits, every later
answer of it would be given again after a restart, and every rebalance would
wait for it. The worker says so instead: an error log, `tfstream_answers_dropped`
and a readiness problem naming the reason. Only an answer cut off by shutdown
stays unfinished, to be read again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from functools import partial

from aiokafka import AIOKafkaConsumer, TopicPartition

from consumer.health import Problems
from consumer.metrics import WorkerMetrics
from consumer.offsets import OffsetTracker
from consumer.records import AnswerDropped, Record, RecordAdapter

log = logging.getLogger(__name__)

#: Longest a fetch (or a wait for room to fetch) blocks the loop.
FETCH_WAIT_MS = 100
#: The readiness problem an answer given up on leaves (until the worker restarts).
DROPPED = "dead letter refused"


class Fetcher:
    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        adapter: RecordAdapter,
        offsets: OffsetTracker,
        max_inflight: int,
        metrics: WorkerMetrics,
        problems: Problems,
    ) -> None:
        self.consumer = consumer
        self.adapter = adapter
        self.offsets = offsets
        self.max_inflight = max_inflight
        self.metrics = metrics
        self.problems = problems
        self.last_tick_s = time.monotonic()
        """When the loop last turned: liveness fails when it stalls."""
        self._capacity = asyncio.Event()

    async def loop(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            self.last_tick_s = time.monotonic()
            room = self.max_inflight - self.adapter.inflight
            if room <= 0:
                self._capacity.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._capacity.wait(), FETCH_WAIT_MS / 1000)
                continue
            batches = await self.consumer.getmany(timeout_ms=FETCH_WAIT_MS, max_records=room)
            for tp, records in batches.items():
                for rec in records:
                    self.offsets.track(tp, rec.offset)
                    done = self.adapter.submit(
                        Record(
                            rec.topic,
                            rec.partition,
                            rec.offset,
                            rec.key,
                            rec.value,
                            tuple(rec.headers),
                            rec.timestamp,
                        )
                    )
                    done.add_done_callback(partial(self.answered, tp, rec.offset))

    def answered(self, tp: TopicPartition, offset: int, done: asyncio.Future[None]) -> None:
        error = asyncio.CancelledError() if done.cancelled() else done.exception()
        if error is None:
            self.offsets.finish(tp, offset)
            self._capacity.set()
            return
        where = {"partition": f"{tp.topic}:{tp.partition}", "offset": offset}
        if isinstance(error, AnswerDropped):
            self.offsets.finish(tp, offset)  # the partition moves on, loudly
            self.metrics.answers_dropped.labels(error.model).inc()
            self.problems.set(DROPPED, f"{where['partition']}@{offset}: {error.reason}")
            log.error(
                "answer and dead letter both refused; the request is committed unanswered",
                extra={**where, "error": error.reason},
            )
        else:  # cut off by shutdown: leave it uncommitted, it will be read again
            log.error(
                "answer not delivered; the request stays uncommitted",
                extra={**where, "error": repr(error)},
            )
        self._capacity.set()
