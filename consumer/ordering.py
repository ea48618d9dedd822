"""Work that must follow the work before it with the same key.

A camera's frames share a key. Its answers keep their order across engine
rounds that run at once (`consumer.pipeline`), and its records are written in
that order, a resent one never after its successors
(`consumer.kafka_io.KafkaOutbox`): both chain each piece of work to the
previous one of its key with `Chains`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class Chains(Generic[K, T]):
    """The last future of each key, kept only while it is pending."""

    def __init__(self) -> None:
        self._last: dict[K, asyncio.Future[T]] = {}

    def follow(self, key: K, future: asyncio.Future[T]) -> asyncio.Future[T] | None:
        """Make `future` the last of `key`; the one before it, if still pending."""
        before = self._last.get(key)
        self._last[key] = future

        def forget(done: asyncio.Future[T]) -> None:
            if self._last.get(key) is done:
                del self._last[key]

        future.add_done_callback(forget)
        return before if before is not None and not before.done() else None
