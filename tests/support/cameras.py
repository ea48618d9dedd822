"""Real cameras for the tests: GStreamer's RTSP server and an HTTP MJPEG server.

The RTSP server is Debian's (deploy/local/rtsp.py, run by the system python3);
`make test` installs its packages here when they are missing, as the demo tests
do for Chromium: a failed install fails the tests, never skips them. The MJPEG
server is a few lines of http.server: multipart/x-mixed-replace, the way IP
cameras serve `/video.mjpg`.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from deploy.local.rtsp import PACKAGES, RtspServer, rtsp_server_installed
from tests.support.apt import apt_install

__all__ = ["MjpegServer", "RtspServer", "ensure_rtsp_server", "write_frames"]


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
