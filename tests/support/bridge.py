"""A `python -m http_bridge` child process, as users run it."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.support.models import REPO_ROOT
from tests.support.workers import free_port, wait_until_ready


@dataclass
class BridgeProcess:
    log_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

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
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "http_bridge"],
                env=env,
                cwd=REPO_ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def wait_ready(self, timeout_s: float = 120) -> None:
        assert self.proc is not None

        def ready() -> bool:
            try:
                return httpx.get(f"{self.url}/health/ready", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until_ready(self.proc, ready, self.log_tail, timeout_s)

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> int | None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return None if self.proc is None else self.proc.returncode
