"""Rolling in new model versions: the one poll loop of the Kafka worker and the
bridge's embedded mode.

Every `--poll-interval-s` the repository is read again; a new version folder
(`<model>/<N>/`) is loaded beside the serving weights and swapped in
(`ModelRegistry.refresh_all`). A model folder new to the repository may need
something first (a Kafka worker creates its topics): `prepare` is asked, and a
refusal skips the turn, so no model is served before it is prepared.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from consumer.registry import Entry, ModelRegistry


async def poll_versions(
    registry: ModelRegistry,
    interval_s: float,
    announce: Callable[[Entry], Awaitable[None]] | None = None,
    prepare: Callable[[list[str]], Awaitable[bool]] | None = None,
    known: set[str] | None = None,
) -> None:
    """Forever: wait `interval_s`, then refresh every model and `announce` each entry.

    `known`: the models already prepared (default: those served now); a model
    served later is handed to `prepare` until it returns True.
    """
    ready = set(registry.served_names()) if known is None else set(known)
    while True:
        await asyncio.sleep(interval_s)
        if prepare is not None:
            fresh = [name for name in registry.served_names() if name not in ready]
            if fresh:
                if not await prepare(fresh):
                    continue  # e.g. the broker away: the next turn tries again
                ready.update(fresh)
        for entry in await asyncio.to_thread(registry.refresh_all):
            if announce is not None:
                await announce(entry)
