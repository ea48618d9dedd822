"""Fixtures of the consumer's unit tests (no broker)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest_asyncio

from consumer.pipeline import Pipeline
from consumer.settings import EngineSettings
from tests.consumer.fakes import CountingEngine, Detectors


@pytest_asyncio.fixture
async def pipeline() -> AsyncIterator[Pipeline]:
    """A running pipeline serving model `a` with a counting fake engine."""
    pipeline = Pipeline(Detectors({"a": CountingEngine()}), EngineSettings(), "w1")
    pipeline.start()
    yield pipeline
    await asyncio.wait_for(pipeline.close(), 10)
