"""Consumer processes and a raw Kafka client for the integration tests.

The raw client deliberately uses plain aiokafka and header names written out
here, not the project's client library: the tests check the wire protocol as
an outside client sees it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tests.support.models import REPO_ROOT

MAX_BYTES = 16 * 1024 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def unique_prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@dataclass
class ConsumerProcess:
    """A `python -m consumer` child process with its own metrics port and log file."""

    bootstrap: str
    repository: Path
    prefix: str
    log_dir: Path
    group: str = "workers"
    extra: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    name: str = field(default_factory=lambda: uuid.uuid4().hex[:6])

    def start(self) -> ConsumerProcess:
        env = {
            **os.environ,
            "TFSTREAM_BOOTSTRAP": self.bootstrap,
            "TFSTREAM_REPOSITORY": str(self.repository),
            "TFSTREAM_TOPIC_PREFIX": self.prefix,
            "TFSTREAM_GROUP": self.group,
            "TFSTREAM_METRICS_HOST": "127.0.0.1",
            "TFSTREAM_METRICS_PORT": str(self.port),
            "TFSTREAM_WORKER_ID": f"w-{self.name}",
            "TFSTREAM_SESSION_TIMEOUT_MS": "6000",
            "TFSTREAM_HEARTBEAT_INTERVAL_MS": "1000",
            "TFSTREAM_METADATA_MAX_AGE_MS": "2000",
            "TFSTREAM_REQUEST_TIMEOUT_MS": "5000",
            "TFSTREAM_PARTITIONS": "4",
            "TFSTREAM_LOG_FORMAT": "json",
            "TF_CPP_MIN_LOG_LEVEL": "2",
            **self.extra,
        }
        self.log_path = self.log_dir / f"consumer-{self.name}.log"
        with self.log_path.open("ab") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "consumer"],
                env=env,
                cwd=REPO_ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def health(self, path: str = "/health/ready") -> tuple[int, dict[str, Any]]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2) as r:
            return str(r.read().decode())

    def wait_ready(self, timeout_s: float = 120) -> None:
        assert self.proc is not None
        wait_until_ready(self.proc, lambda: self.health()[0] == 200, self.log_tail, timeout_s)

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def log_records(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout_s: float = 60) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout_s)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def wait_until_ready(
    proc: subprocess.Popen[bytes],
    ready: Callable[[], bool],
    log_tail: Callable[[], str],
    timeout_s: float,
) -> None:
    """Poll `ready` until it holds; fail with the log if the process exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args} exited with {proc.returncode}:\n{log_tail()}")
        with contextlib.suppress(OSError, ValueError):
            if ready():
                return
        time.sleep(0.3)
    raise AssertionError(f"{proc.args} not ready after {timeout_s}s:\n{log_tail()}")


async def create_topic(
    bootstrap: str, name: str, partitions: int = 1, replication: int = 1
) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        if name not in await admin.list_topics():
            await admin.create_topics(
                [
                    NewTopic(
                        name,
                        partitions,
                        replication,
                        topic_configs={"max.message.bytes": str(MAX_BYTES)},
                    )
                ]
            )
    finally:
        await admin.close()


@contextlib.asynccontextmanager
async def raw_producer(bootstrap: str) -> AsyncIterator[AIOKafkaProducer]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=MAX_BYTES, acks="all")
    await producer.start()
    try:
        yield producer
    finally:
        await producer.stop()


def headers(**values: object) -> list[tuple[str, bytes]]:
    """Request headers by hand: correlation_id -> 'correlation-id', values as UTF-8 text."""
    return [(k.replace("_", "-"), str(v).encode()) for k, v in values.items() if v is not None]


async def read_topic(
    bootstrap: str,
    topic: str,
    expect: int,
    timeout_s: float = 120,
    until: Callable[[list[Any]], bool] | None = None,
) -> list[Any]:
    """Read `topic` from the beginning until `expect` records arrived (or `until(records)`
    holds, when given) or the time is up."""
    done = until or (lambda records: len(records) >= expect)
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        group_id=None,
        max_partition_fetch_bytes=MAX_BYTES,
        fetch_max_bytes=4 * MAX_BYTES,
    )
    await consumer.start()
    records: list[Any] = []
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not done(records):
            batch = await consumer.getmany(timeout_ms=200)
            for recs in batch.values():
                records.extend(recs)
    finally:
        await consumer.stop()
    return records


def replies_by_id(records: Iterable[Any]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for rec in records:
        body = json.loads(rec.value)
        out.setdefault(str(body["correlation_id"]), []).append(body)
    return out


def header_dict(record: Any) -> dict[str, str]:
    return {k: v.decode() for k, v in record.headers}


async def wait_for(predicate: Any, timeout_s: float = 60, interval_s: float = 0.2) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(interval_s)
    raise AssertionError("condition not met in time")
