"""A `python -m http_bridge` child process (see deploy/local/processes.py), and the
bridge of a mode-parametrised fixture: embedded, or over Kafka to its own worker."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.local.processes import BridgeProcess, ConsumerProcess
from tests.support.workers import unique_prefix

__all__ = ["BridgeProcess", "running_bridge"]


@contextlib.contextmanager
def running_bridge(
    request: pytest.FixtureRequest,
    repository: Path,
    logs: Path,
    env: dict[str, str],
    ready_timeout_s: float = 120,
) -> Iterator[tuple[BridgeProcess, ConsumerProcess | None]]:
    """A ready bridge serving `repository` in `request.param` mode ("embedded" or
    "kafka"), with the worker it talks to over Kafka (None when embedded). Both
    load every model before they are ready: `ready_timeout_s` for each."""
    env = dict(env)
    worker = None
    if request.param == "embedded":
        env["TFSTREAM_REPOSITORY"] = str(repository)
    else:
        bootstrap = request.getfixturevalue("kafka_bootstrap")
        prefix = unique_prefix()
        worker = ConsumerProcess(bootstrap, repository, prefix, logs).start()
        worker.wait_ready(ready_timeout_s)
        env.update({"TFSTREAM_BOOTSTRAP": bootstrap, "TFSTREAM_TOPIC_PREFIX": prefix})
    proc = BridgeProcess(logs, env).start()
    try:
        proc.wait_ready(ready_timeout_s)
        yield proc, worker
    finally:
        proc.stop()
        if worker is not None:
            worker.stop()
