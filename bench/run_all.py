"""Every benchmark of docs/benchmarks.md in one run: `python -m bench.run_all` (`make bench`).

The numbers that matter are ratios: what serving over Kafka or HTTP keeps of
what the raw engine does in-process. This machine is shared and noisy, so each
section measures the raw engine itself, in the same run and with the same
processes up, right before and right after its rows, and compares them with
the mean of the two:

1. the Kafka path: `tfstream-replay --max` into one consumer process,
   16 in flight (throughput), and a lone request;
2. the HTTP bridge over Kafka (`tfstream-bridge --bootstrap` in front of the
   same consumer), 16 clients, and a lone request;
3. the HTTP bridge embedded (no Kafka), 16 clients, and a lone request;
   lone requests alternate with raw calls of the same image (A/B pairs,
   bench/lone.py) and report the median of the per-pair differences;
3b. a fixed-batch model (the bench model exported with batch 1) from the
   embedded bridge, 16 clients, with 1 and 2 instances;
4. horizontal scaling: 1, 2 and 4 consumer processes with a simulated
   accelerator (`--simulate-batch-ms`: the engine call sleeps, whatever the
   batch size) behind one 8-partition request topic, so that scaling is not
   bounded by this machine's two cores; efficiency = throughput(n) / (n x
   throughput(1));
5. the pipeline ceiling: one consumer with the simulated accelerator at 1 ms
   per batch on 640x480, 1920x1080 and 3840x2160 JPEG frames, and textured
   (camera-like, ~440 KB) 1920x1080 frames: frames/s, CPU ms per frame of the
   consumer, the broker and the client, the model-size decode cost of the same
   frames and this machine's full-resolution decode limit, in the same run;
5b. feeding a GPU, issue 31's method: the same simulated consumer fed by a
   `tfstream-replay --max` process with 32 distinct textured 1920x1080 and
   3840x2160 frames at 64 and 512 in flight; the consumer's CPU over the whole
   replay per frame answered, against the same frames decoded alone with PIL's
   `draft` in another process (median of three replays; bench/feed.py);
6. camera conflation: a camera at twice the rate one simulated worker serves,
   without and with `conflate: latest`: answers/s, share superseded, and the age
   of the newest answered frame (p50/p99) over a window of 2 x --seconds;
7. the camera gateway: `tfstream-cameras` CPU per camera-second over a bare
   PyAV/FFmpeg decode of the same RTSP stream (640x480 and 1920x1080, 25 fps in,
   5 out), the saving of key-frame-only decoding at 1 fps out, and four
   1920x1080 cameras in one gateway: cameras per core and frame age p50/p95.

The raw engine is decode + inference in this process (bench/raw_engine.py),
batch 1 and batch 8. Everything runs on ssd_mobilenet_v2_bench, sections 1-4 with 640x480
JPEGs of the shapes scenes. The broker is a local Kafka started from the cached
jars (deploy/local/kafka.py), with the full JIT for the run.

Each row also says how many CPU milliseconds each of our processes spent per
answered image, and how much of the machine other tenants took meanwhile; a
row that lost more than `--noise` of the CPU to them is measured once more and
the quieter of the two kept. Results go to docs/benchmarks.md (and, with
--json, to a JSON file). Targets are checked on rows by their ids.

The package: `results` (rows, targets, the noise rules), `processes` (workers
and bridges, on deploy/local), `measure` (one measurement each), `sections`
(one async function per section, taking a `context.Context` and returning its
rows), `page` (the markdown). `--quick` is a smoke run of a few seconds per
row that writes nowhere unless `--out` is given.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from bench.context import Context
from bench.page import markdown
from bench.processes import MODEL
from bench.raw_engine import sample_jpegs
from bench.results import Bench, Outcome, Row, evaluate
from bench.sections import SECTIONS, TARGETS

# The test broker starts fast (C1 only); a benchmark wants the broker at its steady speed.
BENCH_JVM_OPTS = "-XX:TieredStopAtLevel=4 -Xmx1g"


def environment(broker_version: str) -> dict[str, str]:
    import aiokafka
    import tensorflow as tf

    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": model,
        "cores": f"{usable} usable ({os.cpu_count()} online)",
        "memory": _memory(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "aiokafka": aiokafka.__version__,
        "kafka broker": f"{broker_version} (one local node, JVM options {BENCH_JVM_OPTS})",
        "load average at start": " ".join(f"{v:.2f}" for v in os.getloadavg()),
    }


def _memory() -> str:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return f"{int(line.split()[1]) / 1024 / 1024:.0f} GiB"
    return "unknown"


async def run(args: argparse.Namespace, work: Path) -> tuple[Bench, list[Row], dict[str, str]]:
    from deploy.local.kafka import LocalKafkaCluster, kafka_version
    from engines.detector import load_detector
    from engines.repository import ModelRepository

    bench = Bench(
        seconds=args.seconds,
        raw_seconds=args.raw_seconds,
        noise=args.noise,
        retry_until=time.monotonic() + args.retry_budget_s,
    )
    repository = args.repository.resolve()
    jpegs = sample_jpegs(32)
    folder = work / "images"
    folder.mkdir()
    for i, data in enumerate(jpegs):
        (folder / f"frame_{i:03d}.jpg").write_bytes(data)
    logs = work / "logs"
    logs.mkdir()

    os.environ.setdefault("TFSTREAM_KAFKA_JVM_OPTS", BENCH_JVM_OPTS)
    cluster = LocalKafkaCluster(brokers=1, workdir=work / "kafka")
    cluster.start(timeout_s=120)
    env = environment(kafka_version())
    print(f"broker at {cluster.bootstrap}; {env['cpu']}, {env['cores']}", flush=True)
    rows: list[Row] = []
    try:
        broker = cluster.broker_pid(0)
        ctx = Context(
            bench=bench,
            args=args,
            bootstrap=cluster.bootstrap,
            broker_pids=[broker] if broker is not None else [],
            repository=repository,
            jpegs=jpegs,
            folder=folder,
            logs=logs,
            detector=load_detector(ModelRepository(repository).spec(MODEL)),
        )
        for name in args.sections:
            rows += await SECTIONS[name](ctx)
    finally:
        cluster.stop()
    env["load average at end"] = " ".join(f"{v:.2f}" for v in os.getloadavg())
    return bench, rows, env


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repository", type=Path, default=Path("models"))
    parser.add_argument("--seconds", type=float, default=15.0, help="measurement window per row")
    parser.add_argument(
        "--raw-seconds",
        type=float,
        default=10.0,
        help="raw engine window at batch 8 (batch 1: 60%% of it)",
    )
    parser.add_argument(
        "--simulate-batch-ms",
        type=float,
        default=200.0,
        help="engine-call time of the simulated accelerator (scaling rows)",
    )
    parser.add_argument(
        "--noise",
        type=float,
        default=0.10,
        help="measure a row again when other tenants took more than this share of the CPU",
    )
    parser.add_argument(
        "--retry-budget-s",
        type=float,
        default=480.0,
        help="no more measuring again after this many seconds of the run",
    )
    parser.add_argument(
        "--sections",
        type=lambda text: [s.strip() for s in text.split(",") if s.strip()],
        default=list(SECTIONS),
        help=f"comma-separated sections to run, in page order (default: {','.join(SECTIONS)})",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 2 s windows, no measuring again, 50 ms simulated engine calls; "
        "writes the page only with an explicit --out",
    )
    parser.add_argument("--out", type=Path, help="the page (default: docs/benchmarks.md)")
    parser.add_argument("--json", type=Path, help="also write the rows and targets here")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    argv = list(sys.argv[1:] if argv is None else argv)
    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown:
        print(f"error: unknown sections {unknown}; known: {list(SECTIONS)}", file=sys.stderr)
        return 2
    if args.quick:
        args.seconds, args.raw_seconds, args.retry_budget_s = 2.0, 2.0, 0.0
        args.simulate_batch_ms = 50.0
    out = args.out or (None if args.quick else Path("docs/benchmarks.md"))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="tfstream-bench-"))
    try:
        bench, rows, env = asyncio.run(run(args, work))
    except BaseException:
        print(f"bench failed; logs kept in {work}", file=sys.stderr)
        raise
    outcomes = evaluate(rows, TARGETS)
    elapsed = time.monotonic() - started
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(markdown(bench, rows, outcomes, env, argv, elapsed), encoding="utf-8")
        print(f"\nwrote {out} in {elapsed / 60:.1f} min", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(_as_json(env, rows, outcomes), indent=1))
    for o in outcomes:
        measured = "-" if o.measured is None else f"{o.measured:.2f}{o.target.unit}"
        print(f"  {o.verdict.strip('*'):12s} {o.target.name}: {measured}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


def _as_json(env: dict[str, str], rows: list[Row], outcomes: list[Outcome]) -> dict[str, object]:
    return {
        "environment": env,
        "rows": [asdict(r) for r in rows],
        "targets": [
            dict(asdict(o.target), measured=o.measured, met=o.met, verdict=o.verdict)
            for o in outcomes
        ],
    }


if __name__ == "__main__":
    sys.exit(main())
