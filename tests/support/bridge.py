"""A `python -m http_bridge` child process (see deploy/local/processes.py), and the
bridge of a mode-parametrised fixture: embedded, or over Kafka to its own worker."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from deploy.local.processes import BridgeProcess, ConsumerProcess
from tests.support.workers import unique_prefix

__all__ = ["BridgeProcess", "predict", "running_bridge"]


def predict(
    bridge: BridgeProcess | tuple[BridgeProcess, object],
    model: str,
    image: bytes,
    filename: str = "image.png",
    form: dict[str, str] | None = None,
    timeout_s: float = 120,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    """One `POST /models/<model>/predict` of `image` (a `running_bridge` pair works too),
    over HTTPS where the bridge serves it."""
    process = bridge[0] if isinstance(bridge, tuple) else bridge
    return httpx.post(
        f"{process.url}/models/{model}/predict",
        files={"input_data": (filename, image)},
        data=form,
        headers=headers,
        timeout=timeout_s,
        verify=process.verify,
    )


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
