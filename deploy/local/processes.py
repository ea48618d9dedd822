"""Worker and bridge child processes, as users run them, for tests, benchmarks and the demo.

Each process gets its own port, its own log file and the settings a local
broker needs (short sessions, quick metadata refresh); `wait_ready` polls the
process's health endpoint and fails with the log's tail if the process dies.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def json_log_records(path: Path) -> list[dict[str, Any]]:
    """The JSON log lines of a process started with TFSTREAM_LOG_FORMAT=json."""
    out = []
    for line in path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            out.append(json.loads(line))
    return out


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
            "TFSTREAM_BROKER_TIMEOUT_MS": "5000",
            "TFSTREAM_PARTITIONS": "4",
            "TFSTREAM_LOG_FORMAT": "json",
            "TF_CPP_MIN_LOG_LEVEL": "2",
            **self.extra,
        }
        self.log_path = self.log_dir / f"consumer-{self.name}.log"
        self.proc = spawn("consumer", env, self.log_path)
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
        return json_log_records(self.log_path)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout_s: float = 60) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout_s)

    def stop(self) -> None:
        terminate(self.proc)


def spawn(module: str, env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """`python -m module` from the repository root, stdout and stderr to `log_path`."""
    with log_path.open("ab") as log:  # the child keeps its own descriptor
        return subprocess.Popen(
            [sys.executable, "-m", module],
            env=env,
            cwd=REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def terminate(proc: subprocess.Popen[bytes] | None, grace_s: float = 30) -> int | None:
    """SIGTERM, as an orchestrator would (the processes drain and commit), then
    SIGKILL after `grace_s`; the exit code, None if it never started."""
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return None if proc is None else proc.returncode


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


@dataclass
class BridgeProcess:
    log_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    ca_file: Path | None = None
    """With TFSTREAM_HTTPS_CERTFILE in `env`: the CA that signed it, to verify the bridge."""

    @property
    def url(self) -> str:
        scheme = "https" if "TFSTREAM_HTTPS_CERTFILE" in self.env else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def verify(self) -> ssl.SSLContext | bool:
        """httpx's `verify` for this bridge."""
        if self.ca_file is None:
            return True
        return ssl.create_default_context(cafile=str(self.ca_file))

    def start(self) -> BridgeProcess:
        env = {
            **os.environ,
            "TFSTREAM_HOST": "127.0.0.1",
            "TFSTREAM_PORT": str(self.port),
            "TFSTREAM_LOG_FORMAT": "json",
            "TF_CPP_MIN_LOG_LEVEL": "2",
            **self.env,
        }
        self.log_path = self.log_dir / f"bridge-{self.port}.log"
        self.proc = spawn("http_bridge", env, self.log_path)
        return self

    def wait_ready(self, timeout_s: float = 120) -> None:
        assert self.proc is not None

        def ready() -> bool:
            try:
                response = httpx.get(f"{self.url}/health/ready", timeout=2, verify=self.verify)
                return response.status_code == 200
            except httpx.HTTPError:
                return False

        wait_until_ready(self.proc, ready, self.log_tail, timeout_s)

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def log_records(self) -> list[dict[str, Any]]:
        return json_log_records(self.log_path)

    def stop(self) -> int | None:
        return terminate(self.proc)
