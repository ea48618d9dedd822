"""Latest frame wins: which waiting requests a newer one of the same camera replaces.

A camera stream under backlog makes a worker hold several frames of one
camera that have not started yet; for most readers only the newest matters.
Requests that ask for it (`conflate: latest`) or whose model the worker
conflates as a whole take part, grouped by (model, record key): when
one arrives, the waiting one of its group is superseded. A request without a
key, or not taking part, is never superseded and never supersedes another.

Pure bookkeeping, no I/O: the pipeline decides what "waiting" means (fetched
but not yet taken into a batch) and answers the superseded requests.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

J = TypeVar("J")

Key = tuple[str, bytes]


def conflation_key(model: str, key: bytes | None, requested: bool, whole_model: bool) -> Key | None:
    """The group a request conflates in, or None when it does not take part."""
    if key is None or not (requested or whole_model):
        return None
    return model, key


class LatestWins(Generic[J]):
    """Per group, the one waiting job; a newer arrival supersedes it."""

    def __init__(self) -> None:
        self._waiting: dict[Hashable, J] = {}

    def arrive(self, group: Hashable | None, job: J) -> J | None:
        """Register a waiting `job`; returns the job of its group it supersedes, if any."""
        if group is None:
            return None
        older = self._waiting.get(group)
        self._waiting[group] = job
        return older

    def start(self, group: Hashable | None, job: J) -> None:
        """`job` leaves the waiting room (taken into a batch): nothing supersedes it now."""
        if group is not None and self._waiting.get(group) is job:
            del self._waiting[group]

    def __len__(self) -> int:
        return len(self._waiting)
