"""The processes a benchmark starts, on the shared harness of deploy/local."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

from deploy.local.processes import BridgeProcess, ConsumerProcess

MODEL = "ssd_mobilenet_v2_bench"


def worker_env(**values: object) -> dict[str, str]:
    """A benchmark worker's settings: the bench model, max batch 8, quiet logs."""
    return {
        "TFSTREAM_MODELS": MODEL,
        "TFSTREAM_MAX_BATCH": "8",
        "TFSTREAM_LOG_LEVEL": "WARNING",
        **{f"TFSTREAM_{k.upper()}": str(v) for k, v in values.items()},
    }


@contextlib.contextmanager
def bridge(log_dir: Path, **settings: object) -> Iterator[BridgeProcess]:
    """`python -m http_bridge` with these settings (TFSTREAM_<NAME>), ready, stopped on exit."""
    env = {"TFSTREAM_LOG_LEVEL": "WARNING"}
    env.update({f"TFSTREAM_{k.upper()}": str(v) for k, v in settings.items()})
    proc = BridgeProcess(log_dir, env=env).start()
    try:
        proc.wait_ready(timeout_s=180)
        yield proc
    finally:
        proc.stop()


@contextlib.contextmanager
def consumers(
    bootstrap: str, repository: Path, prefix: str, log_dir: Path, count: int, extra: dict[str, str]
) -> Iterator[list[ConsumerProcess]]:
    """`count` consumer processes of one group, started together, stopped on exit."""
    procs = [
        ConsumerProcess(bootstrap, repository, prefix, log_dir, extra=extra).start()
        for _ in range(count)
    ]
    try:
        for proc in procs:
            proc.wait_ready(timeout_s=240)
        yield procs
    finally:
        for proc in procs:
            proc.stop()


def pids(procs: list[ConsumerProcess]) -> list[int]:
    return [p.proc.pid for p in procs if p.proc is not None]


async def wait_balanced(
    procs: list[ConsumerProcess], partitions: int, timeout_s: float = 90
) -> None:
    """Wait until the group's latest assignment gives every member its share of the partitions."""
    deadline = time.monotonic() + timeout_s
    fair = partitions // len(procs)
    sizes: list[int] = []
    while time.monotonic() < deadline:
        sizes = []
        for proc in procs:
            assigned = [r for r in proc.log_records() if r.get("msg") == "partitions assigned"]
            sizes.append(len(assigned[-1].get("partitions", [])) if assigned else 0)
        if sum(sizes) == partitions and all(s >= fair for s in sizes):
            await asyncio.sleep(1)  # the members start fetching
            return
        await asyncio.sleep(0.5)
    raise RuntimeError(f"the consumer group did not settle in {timeout_s}s: partitions {sizes}")
