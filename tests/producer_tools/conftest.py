from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.local.processes import ConsumerProcess
from tests.support.workers import unique_prefix


@pytest.fixture(scope="package")
def worker(
    kafka_bootstrap: str, model_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ConsumerProcess]:
    """One shapes_tf2 worker for the client and tool tests; each test uses its own topics."""
    proc = ConsumerProcess(
        kafka_bootstrap,
        model_repository,
        unique_prefix(),
        tmp_path_factory.mktemp("logs"),
        extra={"TFSTREAM_MODELS": "shapes_tf2", "TFSTREAM_MAX_DELAY_MS": "5"},
    ).start()
    proc.wait_ready()
    yield proc
    proc.stop()
