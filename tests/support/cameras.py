"""Real cameras for the tests: GStreamer's RTSP server and an HTTP MJPEG server.

The RTSP server is Debian's (deploy/local/rtsp.py, run by the system python3);
`make test` installs its packages here when they are missing, as the demo tests
do for Chromium: a failed install fails the tests, never skips them. The MJPEG
server is a few lines of http.server: multipart/x-mixed-replace, the way IP
cameras serve `/video.mjpg`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

from deploy.local.processes import free_port
from deploy.local.rtsp import PACKAGES, RtspServer, rtsp_server_installed
from tests.support.apt import apt_install
from tests.support.models import REPO_ROOT

__all__ = [
    "Cluster",
    "Gateway",
    "MjpegServer",
    "RtspServer",
    "ensure_rtsp_server",
    "run_gateway",
    "write_frames",
]


def ensure_rtsp_server() -> None:
    """apt-get the GStreamer RTSP server when missing (root, else sudo -n); a failure fails."""
    if rtsp_server_installed():
        return
    assert shutil.which("apt-get"), f"no apt-get to install {' '.join(PACKAGES)}; install them"
    apt_install(PACKAGES)
    assert rtsp_server_installed(), f"installed {PACKAGES} but GStreamer's RTSP server fails"


class MjpegServer:
    """HTTP MJPEG (multipart/x-mixed-replace) of a folder's JPEG frames, looped at `fps`.

    `frames_per_connection`: close each connection after that many frames (a camera
    that flaps); 0: never."""

    def __init__(self, folder: Path, fps: float, frames_per_connection: int = 0) -> None:
        self.frames = [p.read_bytes() for p in sorted(folder.glob("*.jpg"))]
        self.fps = fps
        self.connections = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path != "/video.mjpg":
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                outer.connections += 1
                index = 0
                try:
                    while not outer._closed.is_set():
                        if frames_per_connection and index >= frames_per_connection:
                            return
                        data = outer.frames[index % len(outer.frames)]
                        self.wfile.write(
                            b"--frame\r\nContent-Type: image/jpeg\r\n"
                            + f"Content-Length: {len(data)}\r\n\r\n".encode()
                            + data
                            + b"\r\n"
                        )
                        index += 1
                        outer._closed.wait(1.0 / outer.fps)
                except (BrokenPipeError, ConnectionResetError):
                    return

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._closed = threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/video.mjpg"

    def close(self) -> None:
        self._closed.set()
        self.server.shutdown()
        self.server.server_close()


def write_frames(folder: Path, seed: int = 0, labels: Sequence[str] = ()) -> Path:
    """A loop of moving-shapes frames the shapes models detect (the demo's cameras)."""
    from deploy.local.demo import CAMERAS, write_camera_frames

    write_camera_frames(folder, labels or CAMERAS["camera-1"], seed)
    return folder


@dataclass
class Gateway:
    config: Path
    log: Path
    port: int
    proc: subprocess.Popen[bytes]
    cameras: list[dict[str, Any]] = field(default_factory=list)

    def write(self, cameras: list[dict[str, Any]]) -> None:
        self.cameras = cameras
        tmp = self.config.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump({"cameras": cameras}))
        tmp.replace(self.config)

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=3) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except OSError:
            return 0, b""

    def states(self) -> dict[str, dict[str, Any]]:
        status, body = self.get("/cameras")
        if status != 200:
            return {}
        return {c["camera"]: c for c in json.loads(body)["cameras"]}

    def metric(self, name: str, camera: str) -> float:
        _, body = self.get("/metrics")
        prefix = f'{name}{{camera="{camera}"}} '
        for line in body.decode().splitlines():
            if line.startswith(prefix):
                return float(line[len(prefix) :])
        return float("nan")

    def wait(self, predicate: Any, timeout_s: float, what: str) -> float:
        start = time.monotonic()
        while time.monotonic() - start < timeout_s:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            if predicate():
                return time.monotonic() - start
            time.sleep(0.1)
        raise AssertionError(f"{what} not within {timeout_s}s: {self.states()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@dataclass(frozen=True)
class Cluster:
    """Where a gateway sends: a broker and a topic prefix (a ConsumerProcess has both)."""

    bootstrap: str
    prefix: str


def run_gateway(
    bootstrap: str,
    prefix: str,
    folder: Path,
    cameras: list[dict[str, Any]],
    *args: str,
    **env: str,
) -> Gateway:
    """`python -m producer_tools.cameras` on `cameras` (written to folder/cameras.yaml),
    its output in folder/gateway.log; returned once /health/live answers."""
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "cameras.yaml"
    log = folder / "gateway.log"
    port = free_port()
    gateway = Gateway(config, log, port, proc=None)  # type: ignore[arg-type]
    gateway.write(cameras)
    with open(log, "ab") as out:
        gateway.proc = subprocess.Popen(
            [sys.executable, "-m", "producer_tools.cameras", str(config), *args],
            cwd=REPO_ROOT,
            env={
                **os.environ,
                "TFSTREAM_BOOTSTRAP": bootstrap,
                "TFSTREAM_TOPIC_PREFIX": prefix,
                "TFSTREAM_LOG_FORMAT": "json",
                "TFSTREAM_METRICS_HOST": "127.0.0.1",
                "TFSTREAM_METRICS_PORT": str(port),
                **env,
            },
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    gateway.wait(lambda: gateway.get("/health/live")[0] == 200, 60, "gateway up")
    return gateway
