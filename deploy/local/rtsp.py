"""GStreamer's RTSP server as a local camera: for the tests, the demo and the benchmarks.

`deploy/local/rtsp_server.py` runs under the system `/usr/bin/python3` (Debian's
python3-gi and gir1.2-gst-rtsp-server-1.0; the project's virtualenv has no
GObject bindings); this module starts it, waits for it to listen, and drives
its failures (stall, resume, stop and start again: a camera reboot).
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

from deploy.local.processes import REPO_ROOT, free_port

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
SCRIPT = REPO_ROOT / "deploy" / "local" / "rtsp_server.py"


def rtsp_server_installed() -> bool:
    if not Path(SYSTEM_PYTHON).exists():
        return False
    probe = subprocess.run([SYSTEM_PYTHON, "-c", _PROBE], capture_output=True, timeout=60)
    return probe.returncode == 0


class RtspServer:
    """One `rtsp_server.py` process; `stop()` and `start()` again make a camera reboot.

    `mounts`: name -> (folder of frame_NNN.jpg, fps[, "WIDTHxHEIGHT" to scale to]).
    """

    def __init__(
        self,
        mounts: dict[str, tuple[Path, int] | tuple[Path, int, str]],
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
        for name, (folder, fps, *size) in self.mounts.items():
            spec = f"{name}={folder}:{fps}" + (f":{size[0]}" if size else "")
            args += ["--mount", spec]
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
