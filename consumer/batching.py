"""How many queued requests make the next model call, and with what timing.

`Batching` is one model's settings: at most `max_batch` requests per engine
call (what one call of the model takes: its fixed batch where its graph has
one, else `max_batch` from its config.json or the command line), waiting at
most `max_delay_s` for more once one is there, with `instances` engine calls
of the model running at once. `batching_for` is the one place that decides it.

`collect` takes what is already queued, up to `max_items`; if that is fewer,
it waits at most `max_delay_s` for more. A lone request therefore waits
`max_delay_s` at most, and under load batches fill from the queue without
waiting at all. Items that `skip` rejects (answered while queued) are dropped
and take no place.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from consumer.settings import EngineSettings
    from engines.detector import Detector

T = TypeVar("T")

#: Put on the queue to say that no more items come; `collect` returns [] once it is reached.
CLOSED: object = object()


@dataclass(frozen=True)
class Batching:
    """How one model's requests become engine calls."""

    max_batch: int
    """Most requests in one engine call: never more than one call of the model takes."""
    max_delay_s: float
    """Longest wait for more requests once one is queued."""
    instances: int
    """Engine calls of the model that may run at once."""


def batching_for(settings: EngineSettings, detector: Detector) -> Batching:
    """The model's config.json fields where it has them, else the command line's.

    A graph with a fixed batch (most Object Detection API exports take exactly
    one image) decides `max_batch` whatever either says: a bigger group would
    only be split into several calls that all report the group's size."""
    config = detector.spec.config
    fixed = detector.engine.fixed_batch
    if fixed is not None:
        max_batch = fixed
    else:
        max_batch = config.max_batch or settings.batch_limit(detector.device)
    delay_ms = settings.max_delay_ms if config.max_delay_ms is None else config.max_delay_ms
    instances = config.instances or settings.instance_limit(detector.device, fixed)
    return Batching(max_batch=max_batch, max_delay_s=delay_ms / 1000, instances=instances)


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
