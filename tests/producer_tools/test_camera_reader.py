"""A camera that fails for hours, a broker not there yet: what the gateway does (no broker).

Each reconnect opens a new FFmpeg context and decodes new frames; a camera that
flaps all day reconnects tens of thousands of times, and a gateway whose file
is edited all day starts and stops as many readers. Bounded loops here stand in
for the hours: what one cycle leaks, a hundred show.
"""

from __future__ import annotations

import asyncio
import gc
import resource
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import av
import pytest
from aiokafka import AIOKafkaProducer

from deploy.local.processes import free_port
from producer_tools.camera_config import CameraConfig
from producer_tools.camera_reader import CameraReader, Timeouts
from producer_tools.cameras import CamerasSettings, Gateway
from tests.support.cameras import MjpegServer, run_gateway, write_frames

FAST = Timeouts(connect_s=3, read_s=3, backoff_s=0.001, backoff_max_s=0.001)


@pytest.fixture(scope="module")
def flapping(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MjpegServer]:
    """An MJPEG camera that drops every connection after two frames."""
    server = MjpegServer(write_frames(tmp_path_factory.mktemp("frames")), 200, 2)
    yield server
    server.close()


def _live(kind: type) -> int:
    gc.collect()
    return sum(isinstance(o, kind) for o in gc.get_objects())


def _camera_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("camera-")]


def _wait(predicate: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def test_a_flapping_camera_keeps_no_thread_ffmpeg_context_or_frame(
    flapping: MjpegServer,
) -> None:
    reader = CameraReader(CameraConfig(id="flap", url=flapping.url, model="m", fps=1), FAST)
    reader.start()
    try:
        _wait(lambda: reader.stats.reconnects >= 20, 60, "20 reconnects")
        threads = threading.active_count()
        rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        _wait(lambda: reader.stats.reconnects >= 500, 120, "500 reconnects")
        assert reader.stats.frames_in >= 400 and reader.stats.connects >= 500
        # One reader thread, whatever the reconnects; the server's handler threads come
        # and go with the connections.
        assert _camera_threads() == ["camera-flap"]
        assert threading.active_count() <= threads + 2
        # The open context and the frame in the slot at most; none of the closed ones.
        assert _live(av.container.InputContainer) <= 1
        assert _live(av.VideoFrame) <= 2
        grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_kib) / 1024
        assert grown_mib < 20, f"{grown_mib:.1f} MiB more after 480 reconnects"
    finally:
        reader.stop()
    assert reader.join(5) and reader.stats.state == "stopped"
    gc.collect()
    assert _live(av.container.InputContainer) == 0


def test_cameras_added_and_removed_many_times_leave_no_reader_or_series(
    flapping: MjpegServer, tmp_path: Path
) -> None:
    """50 edits of the file, each adding three cameras and removing the previous three."""
    settings = CamerasSettings(config=tmp_path / "cameras.yaml", bootstrap="127.0.0.1:1")

    async def edits() -> tuple[list[str], list[str], int]:
        # Never started: these cameras deliver no frame before they are removed, or
        # none is sent (no topic), so nothing reaches the producer.
        producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:1")
        gateway = Gateway(settings, producer)
        for round_ in range(50):
            gateway.apply(
                {
                    f"c{round_}-{i}": CameraConfig(
                        id=f"c{round_}-{i}", url="rtsp://127.0.0.1:1/x", model="m", fps=1
                    )
                    for i in range(3)
                }
            )
            await asyncio.sleep(0.01)
        running = sorted(gateway.cameras)
        gateway.apply({})
        await asyncio.sleep(0.2)
        left = await gateway.stop()
        await producer.stop()  # never started, but left unstopped it warns when collected
        return running, sorted(c.camera for c in gateway.counters()), left

    running, counted, left = asyncio.run(asyncio.wait_for(edits(), 60))
    assert running == ["c49-0", "c49-1", "c49-2"]
    assert counted == [] and left == 0
    _wait(lambda: not _camera_threads(), 10, f"readers still running: {_camera_threads()}")


def test_before_the_broker_listens_the_cameras_connect_health_answers_and_sigterm_is_prompt(
    tmp_path: Path,
) -> None:
    """A brand-new cluster: the gateway may start before the broker listens. It is live
    (a liveness probe must not kill it), its cameras connect and are shown, it is not
    ready, and SIGTERM ends it at once, not after --start-timeout-s."""
    folder = write_frames(tmp_path / "frames")
    camera = {"id": "early", "url": str(folder), "model": "m", "fps": 5}
    nobody = f"127.0.0.1:{free_port()}"
    gateway = run_gateway(nobody, "t", tmp_path, [camera], TFSTREAM_START_TIMEOUT_S="600")
    try:
        gateway.wait(lambda: gateway.states()["early"]["connected"], 30, "camera shown")
        assert gateway.get("/health/ready")[0] == 503  # no broker yet
        assert gateway.states()["early"]["frames_sent"] == 0
        started = time.monotonic()
        gateway.proc.send_signal(signal.SIGTERM)
        code = gateway.proc.wait(10)
        assert time.monotonic() - started < 2.0 and code == 0
    finally:
        gateway.stop()
    assert "Traceback" not in gateway.log.read_text(), gateway.log.read_text()[-3000:]


def test_a_broker_that_never_comes_ends_the_gateway_with_service_unavailable(
    tmp_path: Path,
) -> None:
    """Its cameras ran meanwhile; at --start-timeout-s it exits 1 with the stable code,
    its readers stopped (no traceback, no hang)."""
    folder = write_frames(tmp_path / "frames")
    camera = {"id": "early", "url": str(folder), "model": "m", "fps": 5}
    nobody = f"127.0.0.1:{free_port()}"
    gateway = run_gateway(nobody, "t", tmp_path, [camera], TFSTREAM_START_TIMEOUT_S="4")
    try:
        code = gateway.proc.wait(30)
    finally:
        gateway.stop()
    output = gateway.log.read_text()
    assert code == 1 and "[service_unavailable]" in output, output[-3000:]
    assert "camera connected" in output and "Traceback" not in output, output[-3000:]
