"""Real cameras for the tests: GStreamer's RTSP server and an HTTP MJPEG server.

The RTSP server is Debian's (tests/support/rtsp_server.py, run by the system
python3); `make test` installs its packages here when they are missing, as the
demo tests do for Chromium: a failed install fails the tests, never skips them.
The MJPEG server is a few lines of http.server: multipart/x-mixed-replace, the
way IP cameras serve `/video.mjpg`.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from deploy.local.processes import free_port
from tests.support.models import REPO_ROOT

SYSTEM_PYTHON = "/usr/bin/python3"
PACKAGES = (
    "gir1.2-gst-rtsp-server-1.0",
    "gstreamer1.0-rtsp",
    "python3-gi",
    "gstreamer1.0-plugins-ugly",
    "gstreamer1.0-plugins-good",
    "gstreamer1.0-plugins-base",
)
_PROBE = (
    "import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0'); "
    "from gi.repository import Gst, GstRtspServer; Gst.init(None); "
    "assert Gst.ElementFactory.find('x264enc') and Gst.ElementFactory.find('jpegdec')"
)
SCRIPT = REPO_ROOT / "tests" / "support" / "rtsp_server.py"


def rtsp_server_installed() -> bool:
    if not Path(SYSTEM_PYTHON).exists():
        return False
    probe = subprocess.run([SYSTEM_PYTHON, "-c", _PROBE], capture_output=True, timeout=60)
    return probe.returncode == 0


def ensure_rtsp_server() -> None:
    """apt-get the GStreamer RTSP server when missing (root, else sudo -n); a failure fails."""
    if rtsp_server_installed():
        return
    assert shutil.which("apt-get"), f"no apt-get to install {' '.join(PACKAGES)}; install them"
    prefix = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update"], ["apt-get", "install", "-y", *PACKAGES]):
        result = subprocess.run(
            [*prefix, *command], env=env, capture_output=True, text=True, timeout=900, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    assert rtsp_server_installed(), f"installed {PACKAGES} but GStreamer's RTSP server fails"


class RtspServer:
    """One `rtsp_server.py` process; `stop()` and `start()` again make a camera reboot."""

    def __init__(
        self,
        mounts: dict[str, tuple[Path, int]],
        auth: str = "",
        port: int | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.mounts = mounts
        self.auth = auth
        self.port = port or free_port()
        self.log_path = log_path
        self.proc: subprocess.Popen[str] | None = None

    def url(self, mount: str, credentials: str = "") -> str:
        user = f"{credentials}@" if credentials else ""
        return f"rtsp://{user}127.0.0.1:{self.port}/{mount}"

    def start(self, timeout_s: float = 30) -> RtspServer:
        args = [SYSTEM_PYTHON, str(SCRIPT), "--port", str(self.port)]
        for name, (folder, fps) in self.mounts.items():
            args += ["--mount", f"{name}={folder}:{fps}"]
        if self.auth:
            args += ["--auth", self.auth]
        with open(self.log_path or os.devnull, "a") as stderr:
            self.proc = subprocess.Popen(
                args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True
            )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        line = self.proc.stdout.readline()
        assert line.startswith("ready"), f"RTSP server did not start: {line!r}"
        while time.monotonic() < deadline:  # listening: accept a TCP connection
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.1)
        raise AssertionError("RTSP server not listening")

    def command(self, line: str) -> None:
        assert self.proc is not None and self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == f"ok {line}"

    def stall(self, mount: str) -> None:
        """Stop sending the mount's frames; its connections stay open."""
        self.command(f"stall {mount}")

    def resume(self, mount: str) -> None:
        self.command(f"resume {mount}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            for pipe in (self.proc.stdin, self.proc.stdout):
                if pipe is not None:
                    pipe.close()
            self.proc = None


class MjpegServer:
    """HTTP MJPEG (multipart/x-mixed-replace) of a folder's JPEG frames, looped at `fps`."""

    def __init__(self, folder: Path, fps: float) -> None:
        self.frames = [p.read_bytes() for p in sorted(folder.glob("*.jpg"))]
        self.fps = fps
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path != "/video.mjpg":
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                index = 0
                try:
                    while not outer._closed.is_set():
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
