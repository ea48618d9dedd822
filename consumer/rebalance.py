"""Partitions moving between workers: hand back the work of revoked partitions.

aiokafka calls the listener inside the rebalance, before the partitions go to
their next owner (`aiokafka.abc.ConsumerRebalanceListener`): with manual
commits, whatever is answered must be committed here, or the next owner answers
it again. The revoked partitions' requests in flight are waited for, up to
`--shutdown-timeout-s`; a request whose answer was given up (`AnswerDropped`)
is no longer in flight, so it never holds a rebalance back.

Placing assigned partitions (a shadow's start positions) asks the broker, which
may refuse for a while (a coordinator still loading on a brand-new cluster). It
is tried again until it succeeds: aiokafka only logs what a listener raises, so
a placement that failed once would leave the partitions unplaced and a shadow
not ready until its next rebalance.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from consumer.commits import Commits
from consumer.startup import retrying
from consumer.tracking_stage import TrackingStage
from engines.errors import ServiceUnavailable

log = logging.getLogger(__name__)

#: How often a revoke checks whether the revoked partitions' work is done.
REVOKE_POLL_S = 0.02
#: Failures of a placement that are tried again: refusals, lost connections, and
#: offsets not known in time (`kafka_io.seek_to_time`).
RETRIED = (KafkaError, OSError, ServiceUnavailable)


def _names(partitions: set[TopicPartition]) -> list[str]:
    return sorted(f"{tp.topic}:{tp.partition}" for tp in partitions)


async def hand_back(commits: Commits, revoked: set[TopicPartition], timeout_s: float) -> None:
    """Before partitions move: finish their work in hand and commit it."""
    offsets = commits.offsets
    deadline = time.monotonic() + timeout_s
    while offsets.pending(revoked) and time.monotonic() < deadline:
        await asyncio.sleep(REVOKE_POLL_S)
    unfinished = offsets.pending(revoked)
    if unfinished:  # they will be answered here and again by the partitions' next owner
        log.warning(
            "revoke timed out: unfinished requests will be answered twice",
            extra={"unfinished": unfinished, "timeout_s": timeout_s},
        )
    await commits.commit(revoked)
    offsets.forget(revoked)
    log.info("partitions revoked", extra={"partitions": _names(revoked)})


class Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(
        self,
        commits: Commits,
        timeout_s: float,
        placed: Callable[[set[TopicPartition]], Awaitable[None]] | None = None,
    ) -> None:
        """`placed`: called with newly assigned partitions before they are fetched
        (a shadow places those its group never committed)."""
        self.commits = commits
        self.timeout_s = timeout_s
        self.placed = placed
        self.tracking: TrackingStage | None = None
        """A tracking worker's stage: restores assigned partitions' camera states and
        forgets revoked ones' (`consumer.tracking_stage`)."""

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await hand_back(self.commits, revoked, self.timeout_s)
        if self.tracking is not None:
            self.tracking.revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        placed = self.placed
        if placed is not None:

            async def failed(exc: BaseException, delay_s: float) -> None:
                log.warning(
                    "placing assigned partitions failed; trying again",
                    extra={
                        "partitions": _names(assigned),
                        "error": repr(exc),
                        "retry_in_s": delay_s,
                    },
                )

            await retrying(lambda: placed(assigned), RETRIED, failed)
        if self.tracking is not None:
            self.tracking.assigned(assigned)
        log.info("partitions assigned", extra={"partitions": _names(assigned)})
