"""`make demo`: the whole Kafka path on one machine, watched in a browser.

Starts the local Apache Kafka broker of the test harness, two workers in one
consumer group, the bridge in Kafka mode, and one `tfstream-stream` per
generated camera (moving shapes drawn by the model generator, so the shapes
model finds real boxes), and, where GStreamer's RTSP server is installed
(`make test` installs it), a third camera served over RTSP and read by
`tfstream-cameras`; prints the URLs; on Ctrl-C (SIGINT) or SIGTERM stops
everything it started, cameras first and the broker last, and exits 0.

    python -m deploy.local.demo --repository models --port 4343
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import numpy as np

from deploy.local.kafka import KafkaLocalError, LocalKafkaCluster
from deploy.local.processes import REPO_ROOT, BridgeProcess, ConsumerProcess, free_port
from deploy.local.rtsp import RtspServer, rtsp_server_installed

MODEL = "shapes_tf2"
FRAME_SIZE = (320, 240)
FRAMES_PER_LOOP = 48
#: Two cameras, two shapes each: one moving along the top band, one along the bottom,
#: so they never overlap (the generator's images keep objects apart too).
CAMERAS: dict[str, tuple[str, str]] = {
    "camera-1": ("red rectangle", "green disc"),
    "camera-2": ("blue rectangle", "yellow disc"),
}
#: With GStreamer's RTSP server installed (deploy/local/rtsp.py), a third camera: H.264
#: over RTSP at 25 frames/s, read by `tfstream-cameras` (its state shows on the page).
RTSP_CAMERA: dict[str, tuple[str, str]] = {"camera-rtsp": ("blue rectangle", "green disc")}


def demo_cameras() -> dict[str, tuple[str, str]]:
    """The cameras `make demo` shows on this machine."""
    from deploy.local.rtsp import rtsp_server_installed

    return {**CAMERAS, **(RTSP_CAMERA if rtsp_server_installed() else {})}


def write_camera_frames(folder: Path, labels: Sequence[str], seed: int) -> list[Path]:
    """One loop of a camera's moving-shapes frames as JPEG files, in name order."""
    from engines.modelgen.images import SHAPE_CLASSES, draw_scene

    classes = {c.display_name: c for c in SHAPE_CLASSES}
    width, height = FRAME_SIZE
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(FRAMES_PER_LOOP):
        # A triangle wave, so the last frame leads smoothly back to the first.
        phase = 1 - abs(1 - 2 * index / FRAMES_PER_LOOP)
        top_w, top_h, disc = 72, 50, 60
        top_left = int(10 + phase * (width - 20 - top_w))
        disc_left = int(width - 10 - disc - phase * (width - 20 - disc))
        objects = [
            (classes[labels[0]], (top_left, 16, top_left + top_w, 16 + top_h)),
            (classes[labels[1]], (disc_left, 150, disc_left + disc, 150 + disc)),
        ]
        image, _ = draw_scene(rng, width, height, objects)
        path = folder / f"frame_{index:03d}.jpg"
        image.save(path, quality=90)
        paths.append(path)
    return paths


@dataclass
class StreamProcess:
    """One `tfstream-stream` camera, looping over its frames until stopped."""

    bootstrap: str
    camera: str
    source: Path
    fps: float
    log_dir: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> StreamProcess:
        self.log_path = self.log_dir / f"stream-{self.camera}.log"
        command = [
            sys.executable,
            "-m",
            "producer_tools.stream",
            f"--bootstrap={self.bootstrap}",
            f"--model={MODEL}",
            f"--camera={self.camera}",
            f"--source={self.source}",
            f"--fps={self.fps}",
            "--loop",
            "--count=1000000000",  # a looping folder is sent until --count; stopped long before
        ]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT
            )
        return self


@dataclass
class GatewayProcess:
    """`tfstream-cameras` with one RTSP camera (the demo's third camera)."""

    bootstrap: str
    camera: str
    url: str
    fps: float
    log_dir: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> GatewayProcess:
        config = self.log_dir / "cameras.yaml"
        entry = {"id": self.camera, "url": self.url, "model": MODEL, "fps": self.fps}
        config.write_text(json.dumps({"cameras": [entry]}))  # JSON is YAML
        self.log_path = self.log_dir / "cameras.log"
        env = {
            **os.environ,
            "TFSTREAM_BOOTSTRAP": self.bootstrap,
            "TFSTREAM_METRICS_HOST": "127.0.0.1",
            "TFSTREAM_METRICS_PORT": str(free_port()),
        }
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "producer_tools.cameras", str(config)],
                cwd=REPO_ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.local.demo",
        description="Kafka, two workers, the bridge in Kafka mode and two generated cameras "
        "(three with GStreamer's RTSP server installed: one over RTSP, via tfstream-cameras); "
        "prints the URLs of the live page and the API; Ctrl-C stops everything.",
    )
    parser.add_argument("--repository", type=Path, default=Path("models"), help="model folder")
    parser.add_argument("--port", type=int, default=4343, help="bridge port (0: any free one)")
    parser.add_argument("--fps", type=float, default=3.0, help="frames per second per camera")
    parser.add_argument("--workdir", type=Path, default=None, help="frames, data and logs here")
    return parser.parse_args(argv)


def _raise_keyboard_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _say(text: str) -> None:
    print(f"demo: {text}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    # Also when started with SIGINT ignored (a background job of a script): Ctrl-C must stop.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="tfstream-demo-"))
    logs = workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    repository = args.repository.resolve()
    if not (repository / MODEL).is_dir():
        print(f"demo: no {MODEL} in {repository}; run `make models` first", file=sys.stderr)
        return 1
    cluster = LocalKafkaCluster(brokers=1, workdir=workdir / "kafka")
    workers: list[ConsumerProcess] = []
    bridge: BridgeProcess | None = None
    streams: list[StreamProcess] = []
    rtsp: RtspServer | None = None
    gateway: GatewayProcess | None = None
    try:
        sources = {
            camera: write_camera_frames(workdir / "frames" / camera, labels, seed)[0].parent
            for seed, (camera, labels) in enumerate(CAMERAS.items())
        }
        _say(f"starting Kafka (logs in {logs})")
        cluster.start()
        bootstrap = cluster.bootstrap
        _say(f"Kafka ready at {bootstrap}; starting two workers of group tfstream-demo")
        workers = [
            ConsumerProcess(
                bootstrap,
                repository,
                "tfstream",
                logs,
                group="tfstream-demo",
                extra={"TFSTREAM_MODELS": MODEL, "TFSTREAM_WORKER_ID": f"demo-worker-{i}"},
            ).start()
            for i in (1, 2)
        ]
        bridge = BridgeProcess(
            logs,
            env={"TFSTREAM_BOOTSTRAP": bootstrap, "TFSTREAM_ANSWER_TIMEOUT_S": "5"},
            port=args.port or free_port(),
        ).start()
        for worker in workers:
            worker.wait_ready()
        bridge.wait_ready()
        streams = [
            StreamProcess(bootstrap, camera, source, args.fps, logs).start()
            for camera, source in sources.items()
        ]
        if rtsp_server_installed():
            ((camera, labels),) = RTSP_CAMERA.items()
            frames = write_camera_frames(workdir / "frames" / camera, labels, len(CAMERAS))
            rtsp = RtspServer({"cam": (frames[0].parent, 25)}, log_path=logs / "rtsp.log")
            rtsp.start()
            gateway = GatewayProcess(bootstrap, camera, rtsp.url("cam"), args.fps, logs).start()
            _say(f"RTSP camera {rtsp.url('cam')} read by tfstream-cameras")
        _say(f"live page  {bridge.url}/streams")
        _say(f"REST API   {bridge.url}/docs")
        _say(f"Kafka      {bootstrap} (topic prefix tfstream)")
        _say("Ctrl-C stops everything")
        while True:
            for proc, name in [
                *((w.proc, f"worker {w.name}") for w in workers),
                (bridge.proc, "bridge"),
                *((s.proc, f"stream {s.camera}") for s in streams),
                (gateway.proc if gateway is not None else None, "tfstream-cameras"),
            ]:
                if proc is not None and proc.poll() is not None:
                    _say(f"{name} exited with {proc.returncode}; see {logs}")
                    return 1
            time.sleep(0.5)
    except KeyboardInterrupt:
        return 0
    except (KafkaLocalError, AssertionError) as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    finally:
        # A second Ctrl-C must not cut the shutdown short and leave processes behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _say("stopping")
        _stop_all(
            [
                *(s.proc for s in streams),
                gateway.proc if gateway is not None else None,
                bridge.proc if bridge is not None else None,
                *(w.proc for w in workers),
            ]
        )
        if rtsp is not None:
            rtsp.stop()
        with contextlib.suppress(KafkaLocalError):
            cluster.stop()
        _say("stopped")


def _stop_all(procs: Sequence[subprocess.Popen[bytes] | None], timeout_s: float = 30) -> None:
    """SIGTERM to all at once (workers finish the batch in hand), then wait; kill stragglers."""
    running = [p for p in procs if p is not None and p.poll() is None]
    for proc in running:
        proc.terminate()
    deadline = time.monotonic() + timeout_s
    for proc in running:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


if __name__ == "__main__":
    sys.exit(main())
