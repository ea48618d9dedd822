"""Which offsets may be committed: at-least-once bookkeeping.

Kafka commits are a single number per partition ("everything before this is
done"), but requests finish out of order (batches, different models). So we
commit the lowest offset still pending, or one past the highest seen when none
is pending. A record is finished only once its reply (and DLQ copy) was acked by
the broker, so a crash can repeat answers but never lose one.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field


@dataclass
class _Partition:
    pending: set[int] = field(default_factory=set)
    highest: int = -1
    committed: int = -1
    """The last offset handed out by `commit_points` (the next offset to read)."""

    def next_offset(self) -> int:
        return min(self.pending) if self.pending else self.highest + 1


class OffsetTracker:
    """Per-partition pending offsets. Partitions are any hashable key (TopicPartition)."""

    def __init__(self) -> None:
        self._parts: dict[Hashable, _Partition] = {}

    def track(self, partition: Hashable, offset: int) -> None:
        part = self._parts.setdefault(partition, _Partition())
        part.pending.add(offset)
        part.highest = max(part.highest, offset)

    def finish(self, partition: Hashable, offset: int) -> None:
        """Mark done; a partition forgotten since (revoked) is ignored."""
        part = self._parts.get(partition)
        if part is not None:
            part.pending.discard(offset)

    def pending(self, partitions: Iterable[Hashable] | None = None) -> int:
        keys = self._parts.keys() if partitions is None else partitions
        return sum(len(self._parts[k].pending) for k in keys if k in self._parts)

    def commit_points(self, partitions: Iterable[Hashable] | None = None) -> dict[Hashable, int]:
        """Offsets to commit (Kafka's "next offset to read") that moved since the last call."""
        keys = (
            list(self._parts) if partitions is None else [k for k in partitions if k in self._parts]
        )
        points: dict[Hashable, int] = {}
        for key in keys:
            part = self._parts[key]
            offset = part.next_offset()
            if offset > part.committed and part.highest >= 0:
                points[key] = offset
        return points

    def committed(self, points: dict[Hashable, int]) -> None:
        for key, offset in points.items():
            if key in self._parts:
                self._parts[key].committed = max(self._parts[key].committed, offset)

    def forget(self, partitions: Iterable[Hashable]) -> None:
        for key in partitions:
            self._parts.pop(key, None)
