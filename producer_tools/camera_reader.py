"""One camera's reader: a thread that drains its stream and keeps only the newest frame.

Why a thread that never waits for the sender: a network camera pushes frames
at its own rate, and every frame not read sits in the socket, the jitter buffer
or the decoder; a reader that reads only when it wants a frame falls further
behind with every second (the RTSP complaint of every peer). Here the reader
reads continuously, replaces its one-frame slot with each decoded frame, and
the sender takes whatever is newest at its own pace; nothing queues.

Decoding is PyAV (FFmpeg's libraries), not OpenCV's VideoCapture: PyAV takes
open and read timeouts (an interrupt callback inside FFmpeg, so a dead camera
cannot hang the reader), passes demuxer options (RTSP over TCP, no buffering,
low delay), raises typed errors (401, 404, refused, timed out) that become the
camera's reported state, can skip non-key frames before decoding, and decodes
on the GPU (NVDEC) when one is usable. VideoCapture has none of these knobs
for network streams.

Failures reconnect with a capped exponential backoff: a drop, a stall (no
frame within the read timeout), a camera that reboots or never connects.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engines.errors import InvalidCameraConfig
from producer_tools.camera_config import (
    NETWORK_SCHEMES,
    CameraConfig,
    mask_secrets,
)

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})


@dataclass(frozen=True)
class Timeouts:
    connect_s: float = 10.0
    """Opening the stream (TCP, RTSP DESCRIBE/SETUP/PLAY, first packets)."""
    read_s: float = 5.0
    """No frame within this long: the camera stalled; reconnect."""
    backoff_s: float = 0.5
    """First wait before reconnecting; doubles on each failure in a row."""
    backoff_max_s: float = 5.0
    """Cap of the wait between tries, so a rebooted camera is back within it."""


@dataclass
class Decoded:
    """The newest frame of a camera, as the reader left it."""

    seq: int
    captured: float
    """time.monotonic() when the frame left the decoder: the start of its age."""
    captured_wall: float
    decode_s: float
    frame: Any = None
    """A PyAV VideoFrame (converted to pixels only if it is sent)."""
    jpeg: bytes | None = None
    """Already encoded (an image folder): sent as is when it fits."""


class CameraStall(Exception):
    """No frame within the read timeout while the connection stayed open."""


@dataclass
class ReaderStats:
    state: str = "connecting"
    """connecting, connected, reconnecting, ended, stopped."""
    last_error: str | None = None
    """`code: message`, credentials masked."""
    tried: bool = False
    """At least one connection attempt finished (either way): /health/ready waits for it."""
    connects: int = 0
    reconnects: int = 0
    frames_in: int = 0
    superseded: int = 0
    """Frames replaced in the slot before the sender took them."""
    decode_s_total: float = 0.0
    hwaccel: bool = False
    source_fps: float | None = None
    lag_s: float = 0.0
    """How far the stream's own clock (pts) is behind the wall clock since connecting:
    a reader that keeps up holds this flat; a growing value means buffering."""


def error_code(exc: BaseException) -> str:
    """A stable short code for a connection error (the page and metrics show it)."""
    import av

    if isinstance(exc, CameraStall):
        return "stalled"
    if isinstance(exc, InvalidCameraConfig):
        return exc.code
    if isinstance(exc, av.error.HTTPUnauthorizedError | av.error.HTTPForbiddenError):
        return "unauthorized"
    if isinstance(exc, av.error.HTTPNotFoundError):
        return "not_found"
    if isinstance(exc, ConnectionRefusedError):
        return "connection_refused"
    if isinstance(exc, av.error.ExitError | TimeoutError):
        return "timed_out"
    if isinstance(exc, av.error.EOFError | EOFError):
        return "ended"
    if isinstance(exc, FileNotFoundError):
        return "not_found"
    if isinstance(exc, av.error.InvalidDataError):
        return "invalid_data"
    return "io_error"


def is_network(url: str) -> bool:
    return url.split("://", 1)[0].lower() in NETWORK_SCHEMES and "://" in url


def is_device(url: str) -> bool:
    return url.isdigit() or url.startswith("/dev/video")


def gpu_decoding_usable() -> bool:
    """NVDEC only where a GPU is there: never required, never tried on a CPU machine."""
    import av.codec.hwaccel

    return "cuda" in av.codec.hwaccel.hwdevices_available() and Path("/dev/nvidia0").exists()


class CameraReader:
    """Reads one camera in a daemon thread until `stop()`; the newest frame is `take()`n."""

    def __init__(self, camera: CameraConfig, timeouts: Timeouts | None = None) -> None:
        self.camera = camera
        self.timeouts = timeouts or Timeouts()
        self.stats = ReaderStats()
        self._lock = threading.Lock()
        self._latest: Decoded | None = None
        self._taken_seq = -1
        self._seq = 0
        self._stop = threading.Event()
        self._secrets = self._known_secrets()
        self._thread = threading.Thread(target=self._run, name=f"camera-{camera.id}", daemon=True)

    def _known_secrets(self) -> list[str]:
        out = []
        if self.camera.password_env:
            out.append(os.environ.get(self.camera.password_env, ""))
        if self.camera.password_file:
            with contextlib.suppress(OSError):
                out.append(self.camera.password_file.read_text().rstrip("\r\n"))
        return [s for s in out if s]

    def mask(self, text: str) -> str:
        return mask_secrets(text, self._secrets)

    # -- the sender's side --------------------------------------------------

    def start(self) -> CameraReader:
        self._thread.start()
        return self

    def take(self) -> Decoded | None:
        """The newest frame not taken yet, or None when nothing new arrived."""
        with self._lock:
            latest = self._latest
            if latest is None or latest.seq == self._taken_seq:
                return None
            self._taken_seq = latest.seq
            return latest

    def stop(self) -> None:
        """Ask the thread to end; it does at its next frame or timeout, whatever its state."""
        self._stop.set()

    def join(self, timeout_s: float) -> bool:
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # -- the reader thread --------------------------------------------------

    def _publish(self, decoded: Decoded) -> None:
        with self._lock:
            if self._latest is not None and self._latest.seq != self._taken_seq:
                self.stats.superseded += 1
            self._latest = decoded
        self.stats.frames_in += 1
        self.stats.decode_s_total += decoded.decode_s

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _run(self) -> None:
        backoff = self.timeouts.backoff_s
        while not self._stop.is_set():
            delivered = False
            try:
                for _ in self._frames():
                    if not delivered:
                        delivered = True
                        backoff = self.timeouts.backoff_s
                    if self._stop.is_set():
                        break
                else:
                    if not self._stop.is_set() and not is_network(self.camera.url):
                        if self.camera.loop or is_device(self.camera.url):
                            continue
                        self.stats.state = "ended"
                        log.info("camera ended", extra={"camera": self.camera.id})
                        return
                    raise EOFError("the stream ended")
            except Exception as exc:
                if self._stop.is_set():
                    break
                code = error_code(exc)
                message = self.mask(_describe(exc))
                self.stats.last_error = f"{code}: {message}"
                self.stats.tried = True
                self.stats.state = "reconnecting"
                self.stats.reconnects += 1
                log.warning(
                    "camera down, reconnecting",
                    extra={
                        "camera": self.camera.id,
                        "url": self.camera.masked_url,
                        "error": code,
                        "detail": message,
                        "retry_in_s": round(backoff, 2),
                    },
                )
                if self._stop.wait(backoff):
                    break
                backoff = min(backoff * 2, self.timeouts.backoff_max_s)
                self.stats.state = "connecting"
        self.stats.state = "stopped"

    def _frames(self) -> Iterator[None]:
        url = self.camera.url
        path = Path(url)
        if not is_network(url) and not is_device(url) and path.is_dir():
            yield from self._folder(path)
            return
        yield from self._av(self.camera.resolved_url() if is_network(url) else url)

    def _connected(self) -> None:
        self.stats.tried = True
        self.stats.connects += 1
        self.stats.state = "connected"
        log.info(
            "camera connected",
            extra={"camera": self.camera.id, "url": self.camera.masked_url},
        )

    def _folder(self, folder: Path) -> Iterator[None]:
        """An image folder as a camera at `fps`: each file in turn, already JPEG."""
        paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            raise FileNotFoundError(f"no image files in {folder}")
        self._connected()
        interval = 1.0 / self.camera.fps
        for path in paths:
            started = time.monotonic()
            data = path.read_bytes()
            now = time.monotonic()
            self._publish(Decoded(self._next_seq(), now, time.time(), now - started, jpeg=data))
            yield
            if self._stop.wait(max(0.0, interval - (time.monotonic() - started))):
                return

    def _av(self, target: str) -> Iterator[None]:
        import av

        options: dict[str, str] = {}
        open_kwargs: dict[str, Any] = {}
        network = is_network(target)
        if network:
            options.update({"fflags": "nobuffer", "flags": "low_delay"})
            if target.lower().startswith(("rtsp://", "rtsps://")):
                options["rtsp_transport"] = self.camera.transport
                options["max_delay"] = "200000"
                options["reorder_queue_size"] = "0" if self.camera.transport == "tcp" else "64"
        if is_device(target):
            open_kwargs["format"] = "v4l2"
            target = f"/dev/video{target}" if target.isdigit() else target
        if self.camera.hwaccel == "auto" and gpu_decoding_usable():
            from av.codec.hwaccel import HWAccel

            open_kwargs["hwaccel"] = HWAccel(device_type="cuda", allow_software_fallback=True)
            self.stats.hwaccel = True
        container = av.open(
            target,
            options=options,
            timeout=(self.timeouts.connect_s, self.timeouts.read_s),
            **open_kwargs,
        )
        try:
            if not container.streams.video:
                raise av.error.InvalidDataError(0, f"no video stream in {target}")
            video = container.streams.video[0]
            keyframes = self.camera.decode == "keyframes"
            if keyframes:
                video.codec_context.skip_frame = "NONKEY"
            rate = video.average_rate or video.guessed_rate
            self.stats.source_fps = float(rate) if rate else None
            self._connected()
            last_frame = time.monotonic()
            first: tuple[float, float] | None = None
            pace = not network and not is_device(target)
            # RTP timestamps follow the camera's clock; MJPEG over HTTP has none.
            timed = target.lower().startswith(("rtsp://", "rtsps://"))
            for packet in _demux(container, video):
                now = time.monotonic()
                if now - last_frame > self.timeouts.read_s:
                    raise CameraStall(f"no frame for {now - last_frame:.1f} s")
                if keyframes and not packet.is_keyframe and packet.size:
                    continue
                started = time.monotonic()
                frames = packet.decode()
                decode_s = time.monotonic() - started
                for frame in frames:
                    done = time.monotonic()
                    last_frame = done
                    pts_s = float(frame.time) if frame.time is not None else None
                    if pts_s is not None:
                        if first is None:
                            first = (done, pts_s)
                        elif pace:
                            # A file plays at its own rate, as a camera would send it.
                            ahead = (pts_s - first[1]) - (done - first[0])
                            if ahead > 0 and self._stop.wait(ahead):
                                return
                            done = time.monotonic()
                        elif timed:
                            self.stats.lag_s = (done - first[0]) - (pts_s - first[1])
                    self._publish(
                        Decoded(self._next_seq(), done, time.time(), decode_s, frame=frame)
                    )
                    yield
                    if self._stop.is_set():
                        return
        finally:
            container.close()


def _demux(container: Any, video: Any) -> Iterator[Any]:
    """The stream's packets; FFmpeg's read timeout on an open connection is a stall."""
    import av

    packets = container.demux(video)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            return
        except av.error.ExitError:
            raise CameraStall("no data within the read timeout") from None
        yield packet


def _describe(exc: BaseException) -> str:
    import av

    if isinstance(exc, av.error.FFmpegError):
        return exc.strerror or str(exc)
    return str(exc) or type(exc).__name__
