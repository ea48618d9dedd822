"""FFmpeg's own decode of a camera stream, the reference of the camera gateway rows.

    python -m bench.camera_decode URL SECONDS

Opens the stream with PyAV (RTSP over TCP, as the gateway does), decodes a
second of it, then decodes every frame for SECONDS and prints one JSON line:
the CPU seconds the process spent in that window (all threads: FFmpeg's
decoder threads count), the wall seconds and the frames decoded. Nothing is
converted, scaled or encoded: this is the least any reader of the stream must
spend, so the gateway's CPU over this CPU is its overhead.
"""

from __future__ import annotations

import json
import sys
import time

import av

WARM_UP = 25
"""Frames decoded before the window opens (the gateway's window also starts once connected)."""


def main() -> int:
    url, seconds = sys.argv[1], float(sys.argv[2])
    container = av.open(url, options={"rtsp_transport": "tcp"}, timeout=(10, 5))
    video = container.streams.video[0]
    frames = -WARM_UP
    started, cpu = time.monotonic(), time.process_time()
    for _ in container.decode(video):
        frames += 1
        if frames == 0:  # the burst the server sends on connecting is behind us
            started, cpu = time.monotonic(), time.process_time()
        elif frames > 0 and time.monotonic() - started >= seconds:
            break
    wall, cpu_s = time.monotonic() - started, time.process_time() - cpu
    container.close()
    print(json.dumps({"cpu_s": cpu_s, "wall_s": wall, "frames": frames}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
