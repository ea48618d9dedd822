"""The one poll loop (worker and embedded bridge): a new version folder is rolled in
and announced; a new model folder is prepared (its topics) before it is served, and
a failed preparation skips the turn. Fake engines, no broker."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from consumer.polling import poll_versions
from consumer.registry import Entry, ModelRegistry
from engines.base import Engine
from engines.repository import ModelRepository, ModelSpec
from tests.consumer.fakes import CountingEngine, until, write_fake_model


def engines(spec: ModelSpec, device: str) -> Engine:
    return CountingEngine()


@pytest.mark.asyncio
async def test_new_versions_roll_in_and_new_models_are_prepared_first(tmp_path: Path) -> None:
    write_fake_model(tmp_path, "m", version=1)
    registry = ModelRegistry(ModelRepository(tmp_path), None, "cpu", engines)
    registry.load_all()
    announced: list[tuple[str, int]] = []
    prepared: list[list[str]] = []

    late_after: list[int] = []

    async def announce(entry: Entry) -> None:
        announced.append((entry.name, entry.version))
        if entry.name == "late":
            late_after.append(len(prepared))  # how many preparations it came after

    async def prepare(fresh: list[str]) -> bool:
        prepared.append(fresh)
        return len(prepared) > 1  # the first try fails (the broker away)

    loop = asyncio.ensure_future(poll_versions(registry, 0.01, announce, prepare))
    try:
        write_fake_model(tmp_path, "m", version=2)
        await until(lambda: ("m", 2) in announced)
        write_fake_model(tmp_path, "late")
        await until(lambda: any(name == "late" for name, _ in announced))
        assert prepared[:2] == [["late"], ["late"]] and min(late_after) >= 2
        entry = registry.entry("m")
        assert entry is not None and entry.version == 2
    finally:
        loop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop
