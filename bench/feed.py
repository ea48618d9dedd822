"""Feeding a GPU, measured as an operator would: the consumer's CPU per camera frame.

Issue 31's method, from outside every process. One `tfstream-consumer` with the
simulated engine (1 ms per batch, max batch 64) is fed by `tfstream-replay
--max`, run as its own process, with >= 32 distinct textured camera frames
(`bench.raw_engine.textured_jpegs`, JPEG quality 85). The consumer's CPU
(utime + stime of /proc/<pid>/stat) over the whole replay, from before the
replay process starts until it has exited, is divided by the frames answered.
It is set against the same frames decoded alone, one thread, in another fresh
process, with PIL's `draft("RGB", (300, 300))` (the DCT-scaled decode the
consumer does). Nothing is warmed up and nothing is cut out: what the consumer
does while the client starts and stops (fetch wake-ups, heartbeats, commits)
counts, as it does for an operator reading `top`.

The ceiling section (section 5) measures the same quantity its own way, and
gets about half of it: docs/profile.md says why the two differ.

    python -m bench.feed --runs 3 --seconds 20        # a broker of its own, both resolutions
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.cpu import minor_faults, process_cpu_s
from bench.processes import MODEL, pids, worker_env
from deploy.local.processes import ConsumerProcess

IN_FLIGHT = (64, 512)
RESOLUTIONS = ((1920, 1080), (3840, 2160))
FRAMES = 32
MAX_BATCH = 64
TARGET_MS = 1.0
"""Consumer CPU per frame beyond the DCT-scaled decode (issue 31)."""

_DECODE = """
import io, sys, time, pathlib, statistics
datas = [f.read_bytes() for f in sorted(pathlib.Path(sys.argv[1]).glob("*.jpg"))]
if sys.argv[3] == "own":
    from engines.images import decode_for_model
    from engines.resizer import FixedShape
    def decode(data):
        decode_for_model(data, resizer=FixedShape(300, 300))
else:
    from PIL import Image
    def decode(data):
        image = Image.open(io.BytesIO(data))
        image.draft("RGB", (300, 300))
        image.load()
times = []
for _ in range(int(sys.argv[2])):
    for data in datas:
        t = time.thread_time()
        decode(data)
        times.append(time.thread_time() - t)
print(1000 * statistics.fmean(times))
"""


def write_frames(folder: Path, width: int, height: int, count: int = FRAMES) -> float:
    """`count` distinct textured frames as files; their mean size in KB."""
    from bench.raw_engine import textured_jpegs

    folder.mkdir(parents=True, exist_ok=True)
    jpegs = textured_jpegs(count, width, height, seed=width)
    for i, data in enumerate(jpegs):
        (folder / f"frame_{i:03d}.jpg").write_bytes(data)
    return sum(map(len, jpegs)) / len(jpegs) / 1024


def decode_alone_ms(folder: Path, passes: int = 3, own: bool = False) -> float:
    """CPU ms of one DCT-scaled PIL decode, mean over the frames, one thread of a fresh
    process (not this one: its heap, threads and caches are not the consumer's either).
    `own`: the consumer's own decode instead (`engines.images.decode_for_model`, which
    decodes JPEGs with libjpeg-turbo directly, faster than PIL), so that what the
    consumer adds to its own decode can be read beside the issue's figure."""
    out = subprocess.run(
        [sys.executable, "-c", _DECODE, str(folder), str(passes), "own" if own else "pil"],
        check=True,
        capture_output=True,
        text=True,
    )
    return float(out.stdout.strip())


@dataclass(frozen=True)
class FeedRun:
    answered: int
    consumer_ms: float
    """Consumer CPU ms per answered frame, the whole replay."""
    replay_ms: float
    """The replay process's CPU ms per answered frame, its start-up included."""
    faults: float
    """The consumer's minor page faults per answered frame (fresh memory touched)."""
    loop_ms: float
    """Of `consumer_ms`, the main thread's: the event loop (Kafka I/O, records, replies);
    the rest is the decode threads' (and the engine's, asleep in the simulation)."""
    frames_per_s: float


def replay_once(
    bootstrap: str, prefix: str, folder: Path, concurrency: int, seconds: float, consumer: int
) -> FeedRun:
    """One `tfstream-replay --max` process; the consumer's CPU around all of it."""
    with tempfile.TemporaryDirectory(prefix="tfstream-feed-") as tmp:
        report = Path(tmp) / "run.json"
        args = [
            sys.executable,
            "-m",
            "producer_tools.replay",
            *("--bootstrap", bootstrap, "--topic-prefix", prefix, "--model", MODEL),
            *("--source", str(folder), "--max", "--concurrency", str(concurrency)),
            *("--duration-s", f"{seconds:g}", "--answer-timeout-s", "60"),
            *("--report", str(report)),
        ]
        env = {**os.environ, "TFSTREAM_PROGRESS": "false"}
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        before = process_cpu_s(consumer)
        loop_before = process_cpu_s(consumer, consumer)
        faults_before = minor_faults(consumer)
        proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        _, err = proc.communicate(timeout=seconds + 180)
        after = process_cpu_s(consumer)
        loop_after = process_cpu_s(consumer, consumer)
        faults_after = minor_faults(consumer)
        reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
        if proc.returncode != 0:
            raise RuntimeError(f"replay failed: {err.decode(errors='replace')[-2000:]}")
        data = json.loads(report.read_text())
    answered = max(1, int(data["answered"]))
    replay_s = (reaped.ru_utime + reaped.ru_stime) - (children.ru_utime + children.ru_stime)
    return FeedRun(
        int(data["answered"]),
        1000 * (after - before) / answered,
        1000 * replay_s / answered,
        (faults_after - faults_before) / answered,
        1000 * (loop_after - loop_before) / answered,
        float(data["throughput"]),
    )


@dataclass(frozen=True)
class FeedResult:
    width: int
    height: int
    in_flight: int
    kb: float
    decode_ms: float
    runs: list[FeedRun]
    own_decode_ms: float = float("nan")
    """The consumer's own decode alone (`decode_alone_ms(own=True)`)."""

    @property
    def consumer_ms(self) -> float:
        return statistics.median(r.consumer_ms for r in self.runs)

    @property
    def beyond_ms(self) -> float:
        """Median over the runs of the consumer's CPU per frame beyond the decode."""
        return self.consumer_ms - self.decode_ms

    def text(self) -> str:
        each = ", ".join(f"{r.consumer_ms - self.decode_ms:+.2f}" for r in self.runs)
        return (
            f"{self.width}x{self.height} ({self.kb:.0f} KB), {self.in_flight} in flight: "
            f"consumer {self.consumer_ms:.2f} ms/frame, decode alone {self.decode_ms:.2f}, "
            f"beyond the decode {self.beyond_ms:+.2f} ms (runs {each}); its own decode "
            f"alone {self.own_decode_ms:.2f}, beyond it "
            f"{self.consumer_ms - self.own_decode_ms:+.2f}; "
            f"event loop {statistics.median(r.loop_ms for r in self.runs):.2f}, other threads "
            f"{statistics.median(r.consumer_ms - r.loop_ms for r in self.runs):.2f} ms/frame; "
            f"{statistics.median(r.faults for r in self.runs):.0f} page faults/frame; "
            f"{statistics.median(r.frames_per_s for r in self.runs):.0f} frames/s, replay "
            f"{statistics.median(r.replay_ms for r in self.runs):.2f} ms/frame"
        )


def consumer_for(
    bootstrap: str, repository: Path, prefix: str, logs: Path, in_flight: int
) -> ConsumerProcess:
    """The issue's consumer: simulated engine at 1 ms per batch, max batch 64,
    `--max-inflight` as deep as the replay's concurrency."""
    extra = worker_env(simulate_batch_ms=1, max_batch=MAX_BATCH, max_inflight=in_flight)
    return ConsumerProcess(bootstrap, repository, prefix, logs, extra=extra).start()


async def measure(
    bootstrap: str,
    repository: Path,
    work: Path,
    logs: Path,
    runs: int,
    seconds: float,
    resolutions: tuple[tuple[int, int], ...] = RESOLUTIONS,
    in_flight: tuple[int, ...] = IN_FLIGHT,
    show: bool = True,
) -> list[FeedResult]:
    """Every resolution at every depth, `runs` replays each; a consumer per depth."""
    frames = {}
    for width, height in resolutions:
        folder = work / f"feed-{width}x{height}"
        kb = write_frames(folder, width, height)
        frames[width, height] = (
            folder,
            kb,
            decode_alone_ms(folder),
            decode_alone_ms(folder, own=True),
        )
    results = []
    for depth in in_flight:
        prefix = f"feed{os.getpid()}d{depth}"
        worker = consumer_for(bootstrap, repository, prefix, logs, depth)
        try:
            await asyncio.to_thread(worker.wait_ready, 240)
            (pid,) = pids([worker])
            for (width, height), (folder, kb, decode_ms, own_ms) in frames.items():
                done = [
                    await asyncio.to_thread(
                        replay_once, bootstrap, prefix, folder, depth, seconds, pid
                    )
                    for _ in range(runs)
                ]
                result = FeedResult(width, height, depth, kb, decode_ms, done, own_ms)
                if show:
                    print(result.text(), flush=True)
                results.append(result)
        finally:
            worker.stop()
    return results


def main(argv: list[str] | None = None) -> int:
    from deploy.local.kafka import LocalKafkaCluster

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repository", type=Path, default=Path("models"))
    parser.add_argument("--runs", type=int, default=3, help="replays per row (the median is kept)")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of one replay")
    parser.add_argument("--in-flight", default="64,512", help="comma-separated depths")
    parser.add_argument("--resolutions", default="1920x1080,3840x2160")
    args = parser.parse_args(argv)
    depths = tuple(int(d) for d in args.in_flight.split(","))
    sizes = tuple((int(w), int(h)) for w, h in (r.split("x") for r in args.resolutions.split(",")))
    os.environ.setdefault("TFSTREAM_KAFKA_JVM_OPTS", "-XX:TieredStopAtLevel=4 -Xmx1g")
    print(f"load average at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="tfstream-feed-"))
    logs = work / "logs"
    logs.mkdir()
    cluster = LocalKafkaCluster(brokers=1, workdir=work / "kafka")
    cluster.start(timeout_s=120)
    started = time.monotonic()
    try:
        asyncio.run(
            measure(
                cluster.bootstrap,
                args.repository.resolve(),
                work,
                logs,
                args.runs,
                args.seconds,
                sizes,
                depths,
            )
        )
    finally:
        cluster.stop()
        # Only the logs are kept: the broker's data and the frames are ~7 GB a run.
        for bulky in work.iterdir():
            if bulky != logs:
                shutil.rmtree(bulky, ignore_errors=True)
    print(
        f"load average at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}; "
        f"{(time.monotonic() - started) / 60:.1f} min; logs in {logs}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
