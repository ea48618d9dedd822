"""What one sent camera frame costs to encode, path by path (not part of `make bench`).

    python -m bench.camera_frame_cost [FRAMES]

Decodes FRAMES frames (40) of the section-7 RTSP streams (640x480 and
1920x1080 H.264 from deploy/local/rtsp.py) and times, per frame, in CPU
milliseconds (median): the BGR round trip the gateway used to make (swscale to
bgr24, then OpenCV's JPEG encoder), the gateway's encoder now
(producer_tools.camera_encode: the decoder's YUV planes into libjpeg-turbo),
the same for a limited-range BT.601 frame (one swscale range pass more), and
for a BT.709 frame (which the encoder sends through BGR as before). The
gateway's CPU per camera-second over FFmpeg's decode (section 7) is the decode
plus these times the frames sent, plus the Kafka producer's share.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av

from deploy.local.demo import CAMERAS, write_camera_frames
from deploy.local.rtsp import RtspServer, rtsp_server_installed
from producer_tools.camera_encode import encode
from producer_tools.camera_reader import Decoded

SIZES = {"640x480": "sd", "1920x1080": "hd"}
QUALITY = 75


def _frames(url: str, count: int) -> list[Any]:
    container = av.open(url, options={"rtsp_transport": "tcp"}, timeout=(10, 5))
    try:
        frames = []
        for frame in container.decode(container.streams.video[0]):
            frames.append(frame)
            if len(frames) == count:
                return frames
        return frames
    finally:
        container.close()


def _median_ms(call: Callable[[Any], object], frames: list[Any]) -> float:
    times = []
    for frame in frames:
        started = time.process_time()
        call(frame)
        times.append(time.process_time() - started)
    return 1000 * statistics.median(times)


def _bgr_round_trip(frame: Any) -> bytes:
    import cv2

    pixels = frame.to_ndarray(format="bgr24")
    return cv2.imencode(".jpg", pixels, [int(cv2.IMWRITE_JPEG_QUALITY), QUALITY])[1].tobytes()


def _gateway(frame: Any) -> bytes:
    decoded = Decoded(seq=1, captured=0.0, captured_wall=0.0, decode_s=0.0, frame=frame)
    return encode(decoded, QUALITY, None, 1 << 30).jpeg


def _limited_range(frame: Any, colorspace: str) -> Any:
    return frame.reformat(format="yuv420p", dst_color_range="MPEG", dst_colorspace=colorspace)


def main() -> int:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 40
    if not rtsp_server_installed():
        print("GStreamer's RTSP server is not installed (make test installs it)")
        return 1
    folder = Path(tempfile.mkdtemp(prefix="tfstream-frame-cost-")) / "frames"
    write_camera_frames(folder, CAMERAS["camera-1"], 0)
    server = RtspServer({m: (folder, 25, size) for size, m in SIZES.items()}).start()
    try:
        for size, mount in SIZES.items():
            frames = _frames(server.url(mount), count)
            first = frames[0]
            limited = {cs: [_limited_range(f, cs) for f in frames] for cs in ("ITU601", "ITU709")}
            print(
                f"{size} ({first.format.name}, colorspace {first.colorspace}, "
                f"range {first.color_range}), CPU ms per frame, median of {len(frames)}:"
            )
            rows = {
                "swscale to bgr24": lambda f: f.to_ndarray(format="bgr24"),
                "BGR round trip: bgr24 + OpenCV JPEG": _bgr_round_trip,
                "gateway: YUV planes to JPEG": _gateway,
            }
            for name, call in rows.items():
                print(f"  {name:40s} {_median_ms(call, frames):6.2f}")
            for colorspace, converted in limited.items():
                name = f"gateway, limited-range {colorspace} frame"
                print(f"  {name:40s} {_median_ms(_gateway, converted):6.2f}")
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
