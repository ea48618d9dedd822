"""Where the frames of `tfstream-replay` and `tfstream-stream` come from.

A source is an image folder (its image files in name order), a video file
(each frame re-encoded as JPEG, since a request carries one encoded image),
a camera (an index such as `0`, or a device path such as `/dev/video0`), or a
network camera (`rtsp://`, `rtsps://`, `http(s)://` MJPEG or HLS), read by the
same reader as `tfstream-cameras` (PyAV: timeouts, reconnects, newest frame
first). Video files and devices need OpenCV (`pip install 'tfstream[video]'`);
folders need nothing.

Sources are read lazily, one frame at a time: a long video or a camera never
has to fit in memory, and a replay of a folder re-reads it when it loops.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engines.errors import TfstreamError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif"})
_CAMERA_INDEX = re.compile(r"\d+")


class SourceError(TfstreamError):
    """The frame source cannot be opened or read (missing, empty, not a video, no OpenCV)."""

    code = "invalid_source"
    http_status = 400
    client_error = True


@dataclass(frozen=True)
class Frame:
    name: str
    """File name, or `<video name>#<frame number>` for video and camera frames."""
    source: str
    """File name for a folder, the video's or camera's name otherwise: the `--key-by source` key."""
    data: bytes
    """The encoded image, as sent."""
    index: int
    """Position in the source (frame number), counted from 0 on each pass."""


class FrameSource:
    """One pass over a source's frames; `frames()` may be called again to loop."""

    name: str = ""
    size: int | None = None
    """Frames in one pass, when known."""
    blocking: bool = False
    """Producing a frame takes real time (video decoding, camera waits): read it in a thread."""
    live: bool = False
    """A camera: frames are 'now', the source cannot be rewound to loop."""

    def frames(self) -> Iterator[Frame]:
        raise NotImplementedError

    def close(self) -> None:
        """Release devices and files (cameras); a no-op for folders."""


class FolderSource(FrameSource):
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.name = folder.name
        self.paths = sorted(
            p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        if not self.paths:
            raise SourceError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}")
        self.size = len(self.paths)

    def frames(self) -> Iterator[Frame]:
        for index, path in enumerate(self.paths):
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise SourceError(f"cannot read {path}: {exc}") from exc
            yield Frame(path.name, path.name, data, index)


def _cv2() -> Any:
    try:
        import cv2
    except ImportError:
        raise SourceError(
            "video files and cameras need OpenCV: pip install 'tfstream[video]' "
            "(opencv-python-headless)"
        ) from None
    return cv2


class CaptureSource(FrameSource):
    """A video file or a camera through OpenCV; frames re-encoded as JPEG."""

    blocking = True

    def __init__(self, target: str | int, name: str, live: bool, jpeg_quality: int = 90) -> None:
        self.cv2 = _cv2()
        self.target = target
        self.name = name
        self.live = live
        self.jpeg_quality = jpeg_quality
        self._capture: Any = None
        probe = self._open()
        if not live:
            frames = int(probe.get(self.cv2.CAP_PROP_FRAME_COUNT) or 0)
            self.size = frames if frames > 0 else None
            probe.release()
        else:
            self._capture = probe  # keep the camera open between passes

    def _open(self) -> Any:
        capture = self.cv2.VideoCapture(self.target)
        if not capture.isOpened():
            capture.release()
            kind = "camera" if self.live else "video"
            raise SourceError(f"cannot open {kind} {self.target!s}")
        return capture

    def frames(self) -> Iterator[Frame]:
        capture = self._capture if self.live else self._open()
        try:
            index = 0
            while True:
                ok, pixels = capture.read()
                if not ok or pixels is None:
                    if index == 0 and not self.live:
                        raise SourceError(f"no frame could be read from {self.target!s}")
                    return
                encoded, buffer = self.cv2.imencode(
                    ".jpg", pixels, [int(self.cv2.IMWRITE_JPEG_QUALITY), self.jpeg_quality]
                )
                if not encoded:
                    raise SourceError(f"cannot encode frame {index} of {self.target!s} as JPEG")
                yield Frame(f"{self.name}#{index}", self.name, buffer.tobytes(), index)
                index += 1
        finally:
            if not self.live:
                capture.release()

    def close(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None


class NetworkSource(FrameSource):
    """A network camera through `tfstream-cameras`' reader: each frame is the newest one
    decoded when asked for, so a slow sender skips frames instead of falling behind."""

    blocking = True
    live = True

    def __init__(self, url: str, jpeg_quality: int = 90, max_bytes: int = 16 * 1024 * 1024):
        from producer_tools.camera_config import CameraConfig
        from producer_tools.camera_reader import CameraReader

        self.config = CameraConfig(id="stream", url=url, model="-", jpeg_quality=jpeg_quality)
        self.name = self.config.masked_url
        self.max_bytes = max_bytes
        self.reader = CameraReader(self.config).start()

    def frames(self) -> Iterator[Frame]:
        import time

        from producer_tools.camera_encode import encode

        index = 0
        while self.reader.alive:
            decoded = self.reader.take()
            if decoded is None:
                time.sleep(0.005)
                continue
            encoded = encode(decoded, self.config.jpeg_quality, None, self.max_bytes)
            yield Frame(f"{self.name}#{index}", self.name, encoded.jpeg, index)
            index += 1

    def close(self) -> None:
        self.reader.stop()


def is_network(spec: str) -> bool:
    from producer_tools.camera_reader import is_network as network

    return network(spec)


def is_camera(spec: str) -> bool:
    return bool(_CAMERA_INDEX.fullmatch(spec)) or spec.startswith("/dev/video")


def open_source(
    spec: str, jpeg_quality: int = 90, max_bytes: int = 16 * 1024 * 1024
) -> FrameSource:
    """A folder, a video file, a camera (`0`, `/dev/video0`) or a network camera URL.

    A network camera is opened in the background (and reopened whenever it drops):
    it never fails here; its frames come once it answers, each re-encoded smaller or
    scaled down to fit `max_bytes` (the record limit) as `tfstream-cameras` does.

    Raises:
        SourceError: missing path, empty folder, unreadable video or camera, no OpenCV.
    """
    if is_network(spec):
        return NetworkSource(spec, jpeg_quality, max_bytes)
    if is_camera(spec):
        target: str | int = int(spec) if _CAMERA_INDEX.fullmatch(spec) else spec
        return CaptureSource(
            target,
            f"camera{spec}" if isinstance(target, int) else Path(spec).name,
            live=True,
            jpeg_quality=jpeg_quality,
        )
    path = Path(spec)
    if path.is_dir():
        return FolderSource(path)
    if not path.exists():
        raise SourceError(f"no such folder, video or camera: {spec}")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        raise SourceError(f"{spec} is one image; give the folder that holds it")
    return CaptureSource(str(path), path.name, live=False, jpeg_quality=jpeg_quality)


def frame_stream(source: FrameSource, count: int = 0, loop: bool = True) -> Iterator[Frame]:
    """The source's frames, passing over it again while `count` is not reached.

    `count` 0: one pass (forever for a camera). A live source is never rewound;
    it simply keeps producing frames until `count`.
    """
    sent = 0
    while True:
        produced = 0
        for frame in source.frames():
            yield frame
            produced += 1
            sent += 1
            if count and sent >= count:
                return
        if not count or not loop or produced == 0 or source.live:
            return
