"""Committing what is answered: the offsets a worker may commit, and the commits.

`OffsetTracker` says which offsets are done; this module sends them to the
group coordinator every `--commit-interval-ms`, for revoked partitions at a
rebalance, and once more at shutdown. A commit that fails (a rebalance under
way, the coordinator moving) is caught up by the next one, except the last:
the shutdown's final commit is tried again once, since a rebalance is exactly
what a worker leaving starts, and a commit lost there is answered twice.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Hashable, Iterable

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError

from consumer.offsets import OffsetTracker

log = logging.getLogger(__name__)

#: Pause before the final commit is tried again (the rebalance it met settles).
FINAL_RETRY_S = 0.5


class Commits:
    def __init__(self, offsets: OffsetTracker, interval_ms: int) -> None:
        self.offsets = offsets
        self.interval_ms = interval_ms
        self.consumer: AIOKafkaConsumer | None = None
        """Set once the group is joined."""

    async def commit(self, partitions: Iterable[Hashable] | None = None) -> bool:
        """Commit what moved; False when the coordinator refused (nothing is lost: the
        offsets are committed by the next call)."""
        points = self.offsets.commit_points(partitions)
        if not points or self.consumer is None:
            return True
        try:
            await self.consumer.commit(points)  # type: ignore[arg-type]
        except KafkaError as exc:  # rebalancing or broker away: the next commit catches up
            log.warning("commit failed", extra={"error": repr(exc)})
            return False
        self.offsets.committed(points)
        return True

    async def loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_ms / 1000)
            await self.commit()

    async def final(self) -> None:
        """The shutdown's commit, tried twice."""
        if await self.commit():
            return
        await asyncio.sleep(FINAL_RETRY_S)
        if not await self.commit():
            log.error("final commit failed: the last answers will be given again")
