"""Section 7: the camera gateway (`tfstream-cameras`) against FFmpeg's own decode.

Cameras are GStreamer's RTSP server (deploy/local/rtsp.py) serving H.264 at
25 frames/s, a key frame every second, of the demo's moving shapes scaled to
640x480 and 1920x1080 (smooth synthetic scenes: cheaper to decode than a
textured street, so the absolute CPU is low; the ratios are what is compared).
The gateway runs as its own process, sending to a request topic of its own
(no worker: what is measured ends at the producer). Its CPU is read from
/proc over the window, once every camera is connected.

Rows:
- gateway at 5 frames/s out, one camera, 640x480 and 1920x1080: CPU ms per
  camera-second, over the CPU ms per camera-second of a bare PyAV decode loop
  of the same stream in its own process, measured right before (the ratio);
- the same camera read but not sent (its request topic absent): what the
  reader, decoder and an idle gateway cost over FFmpeg's decode, apart from
  the encode and the producer of the rows above;
- 1920x1080 at 1 frame/s out, decoding every frame and key frames only: the
  saving of `decode: keyframes`;
- four 1920x1080 cameras at 5 frames/s out in one gateway: CPU per camera, how
  many such cameras one core carries (1000 / CPU ms per camera-second), and
  the frame age at send (decoded to handed to the producer), p50 and p95
  interpolated from the gateway's histogram.

The section is skipped (no rows, a line saying why) where the RTSP server's
packages are not installed: the benchmark machine has them (`make test`
installs them).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import yaml

from bench.context import Context
from bench.cpu import process_cpu_s
from bench.processes import MODEL
from bench.results import Measurement, Row, Target
from consumer import kafka_io
from consumer.settings import KafkaClientSettings
from deploy.local.processes import REPO_ROOT, free_port
from deploy.local.rtsp import RtspServer, rtsp_server_installed

TITLE = "7. Camera gateway: tfstream-cameras against FFmpeg's own decode (RTSP, H.264, 25 fps in)"
GATEWAY_MS = "gateway CPU ms per camera-s"
FFMPEG_MS = "FFmpeg decode CPU ms per camera-s"
RATIO = "gateway / FFmpeg"
SAVING = "saving vs full decode %"
PER_CORE = "cameras per core"
AGE_P50 = "frame age p50 ms"
AGE_P95 = "frame age p95 ms"
SIZES = {"640x480": "sd", "1920x1080": "hd"}
CAPACITY_CAMERAS = 4


def row_id(size: str, fps: int, decode: str = "all", cameras: int = 1) -> str:
    return f"cameras.{size}.{fps}fps.{decode}" + (f".x{cameras}" if cameras > 1 else "")


TARGETS = [
    Target(
        f"gateway CPU over FFmpeg's decode, {size}, 5 fps out", row_id(size, 5), RATIO, 1.2, False
    )
    for size in SIZES
]


def _ffmpeg_decode(url: str, seconds: float) -> float:
    """CPU ms per second of stream of a bare decode loop (bench/camera_decode.py)."""
    out = subprocess.run(
        [sys.executable, "-m", "bench.camera_decode", url, str(seconds)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return 1000 * result["cpu_s"] / result["wall_s"]


def _get(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
        return r.read().decode()


def _ages(metrics: str) -> dict[float, float]:
    """Cumulative frame-age bucket counts, summed over cameras, by upper bound."""
    out: dict[float, float] = {}
    for line in metrics.splitlines():
        if line.startswith("tfstream_camera_frame_age_seconds_bucket{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            bound = math.inf if le == "+Inf" else float(le)
            out[bound] = out.get(bound, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def _quantile(before: dict[float, float], after: dict[float, float], q: float) -> float:
    """Prometheus' histogram_quantile over the window's increase, in ms."""
    buckets = sorted((b, after.get(b, 0.0) - before.get(b, 0.0)) for b in after)
    if not buckets or buckets[-1][1] <= 0:
        return math.nan
    rank, lower, below = q * buckets[-1][1], 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower * 1000
            share = (rank - below) / max(count - below, 1e-9)
            return 1000 * (lower + (bound - lower) * share)
        lower, below = bound, count
    return math.nan


async def _gateway(
    ctx: Context, cameras: list[dict[str, Any]], seconds: float, send: bool = True
) -> tuple[float, int, dict[float, float], dict[float, float]]:
    """(gateway CPU seconds over the window, frames sent, age buckets before, after).

    `send` False leaves the request topic out: the cameras are read and decoded,
    and their frames counted unsent (no encode, no producer)."""
    prefix = f"bench{uuid.uuid4().hex[:6]}"
    settings = KafkaClientSettings(bootstrap=ctx.bootstrap, topic_prefix=prefix)
    if send:
        await kafka_io.ensure_topics(
            settings, [kafka_io.TopicSpec(f"{prefix}.requests.{MODEL}", partitions=4)]
        )
    config = ctx.logs / f"{prefix}-cameras.yaml"
    config.write_text(yaml.safe_dump({"cameras": cameras}))
    port = free_port()
    env = {
        **os.environ,
        "TFSTREAM_BOOTSTRAP": ctx.bootstrap,
        "TFSTREAM_TOPIC_PREFIX": prefix,
        "TFSTREAM_METRICS_HOST": "127.0.0.1",
        "TFSTREAM_METRICS_PORT": str(port),
        "TFSTREAM_STATES_INTERVAL_S": "0",
    }
    with open(ctx.logs / f"{prefix}-gateway.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "producer_tools.cameras", str(config)],
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            await asyncio.sleep(0.5)
            assert proc.poll() is None, f"gateway exited; see {log.name}"
            try:
                states = json.loads(_get(port, "/cameras"))["cameras"]
            except OSError:
                continue
            if states and all(
                s["connected"] and (s["frames_sent"] > 2 or (not send and s["fps_in"] > 0))
                for s in states
            ):
                break
            assert time.monotonic() < deadline, f"cameras not connected: {states}"
        await asyncio.sleep(1.0)
        before_ages, cpu0 = _ages(_get(port, "/metrics")), process_cpu_s(proc.pid)
        sent0 = sum(s["frames_sent"] for s in json.loads(_get(port, "/cameras"))["cameras"])
        await asyncio.sleep(seconds)
        after_ages, cpu1 = _ages(_get(port, "/metrics")), process_cpu_s(proc.pid)
        sent1 = sum(s["frames_sent"] for s in json.loads(_get(port, "/cameras"))["cameras"])
        return cpu1 - cpu0, sent1 - sent0, before_ages, after_ages
    finally:
        proc.terminate()
        proc.wait(10)


def _row(
    id_: str, name: str, cpu_s: float, sent: int, seconds: float, cameras: int, **extra: float
) -> Row:
    per_camera_ms = 1000 * cpu_s / seconds / cameras
    return Row(
        id_,
        TITLE,
        name,
        Measurement(sent / seconds, math.nan, math.nan, sent, note=f"{seconds:.0f} s window"),
        extra={GATEWAY_MS: per_camera_ms, **extra},
    ).show()


async def cameras(ctx: Context) -> list[Row]:
    print(TITLE, flush=True)
    if not rtsp_server_installed():
        print("  skipped: GStreamer's RTSP server is not installed (make test installs it)")
        return []
    from deploy.local.demo import CAMERAS, write_camera_frames

    frames = ctx.logs / "camera-frames"
    write_camera_frames(frames, CAMERAS["camera-1"], 0)
    mounts: dict[str, tuple[Path, int, str]] = {
        name: (frames, 25, size) for size, name in SIZES.items()
    }
    server = RtspServer(mounts, log_path=ctx.logs / "rtsp.log").start()
    seconds = ctx.bench.seconds
    rows: list[Row] = []
    try:

        def camera(i: int, mount: str, fps: int, decode: str = "all") -> dict[str, Any]:
            return {
                "id": f"c{i}",
                "url": server.url(mount),
                "model": MODEL,
                "fps": fps,
                "decode": decode,
            }

        for size, mount in SIZES.items():
            ffmpeg_ms = await asyncio.to_thread(_ffmpeg_decode, server.url(mount), seconds)
            cpu_s, sent, _, _ = await _gateway(ctx, [camera(0, mount, 5)], seconds)
            gateway_ms = 1000 * cpu_s / seconds
            rows.append(
                _row(
                    row_id(size, 5),
                    f"{size}, 1 camera, 5 fps out",
                    cpu_s,
                    sent,
                    seconds,
                    1,
                    **{FFMPEG_MS: ffmpeg_ms, RATIO: gateway_ms / ffmpeg_ms},
                )
            )
            read_s, _, _, _ = await _gateway(ctx, [camera(0, mount, 5)], seconds, send=False)
            rows.append(
                _row(
                    row_id(size, 5, "read-only"),
                    f"{size}, 1 camera, read and decoded, not sent",
                    read_s,
                    0,
                    seconds,
                    1,
                    **{FFMPEG_MS: ffmpeg_ms, RATIO: 1000 * read_s / seconds / ffmpeg_ms},
                )
            )
        full_s, sent, _, _ = await _gateway(ctx, [camera(0, "hd", 1)], seconds)
        rows.append(
            _row(
                row_id("1920x1080", 1),
                "1920x1080, 1 fps out, every frame decoded",
                full_s,
                sent,
                seconds,
                1,
            )
        )
        key_s, sent, _, _ = await _gateway(ctx, [camera(0, "hd", 1, "keyframes")], seconds)
        rows.append(
            _row(
                row_id("1920x1080", 1, "keyframes"),
                "1920x1080, 1 fps out, key frames only",
                key_s,
                sent,
                seconds,
                1,
                **{SAVING: 100 * (1 - key_s / full_s)},
            )
        )
        n = CAPACITY_CAMERAS
        cpu_s, sent, before, after = await _gateway(
            ctx, [camera(i, "hd", 5) for i in range(n)], seconds
        )
        per_camera_ms = 1000 * cpu_s / seconds / n
        rows.append(
            _row(
                row_id("1920x1080", 5, cameras=n),
                f"1920x1080, {n} cameras, 5 fps out each",
                cpu_s,
                sent,
                seconds,
                n,
                **{
                    PER_CORE: 1000 / per_camera_ms,
                    AGE_P50: _quantile(before, after, 0.5),
                    AGE_P95: _quantile(before, after, 0.95),
                },
            )
        )
    finally:
        server.stop()
    return rows
