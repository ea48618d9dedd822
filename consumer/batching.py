"""Batch timing, and nothing else: how many queued items make the next batch.

Take what is already queued, up to `max_items`; if that is fewer, wait at most
`max_delay_s` for more. A lone request therefore waits `max_delay_s` at most,
and under load batches fill from the queue without waiting at all. Items that
`skip` rejects (answered while queued) are dropped and take no place.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

#: Put on the queue to say that no more items come; `collect` returns [] once it is reached.
CLOSED: object = object()


async def collect(
    queue: asyncio.Queue[T],
    max_items: int,
    max_delay_s: float,
    skip: Callable[[T], bool] | None = None,
) -> list[T]:
    """The next batch from `queue`: waits for a first item, then fills. [] means closed."""
    first = await queue.get()
    while first is not CLOSED and skip is not None and skip(first):
        first = await queue.get()
    if first is CLOSED:
        queue.put_nowait(first)  # let every other collector see it too
        return []
    items = [first]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max_delay_s
    while len(items) < max_items:
        try:
            item = queue.get_nowait()
        except asyncio.QueueEmpty:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                item = await asyncio.wait_for(queue.get(), remaining)
            except TimeoutError:
                break
        if item is CLOSED:
            queue.put_nowait(item)
            break
        if skip is None or not skip(item):
            items.append(item)
    return items
