"""Pipeline ceiling: what one consumer takes when the engine is nearly free.

On a GPU the engine call is cheap and the rest of the pipeline sets the
throughput: fetching, decoding, replying, the broker and the client. This
section measures that rest: one consumer whose engine is the simulated
accelerator (`--simulate-batch-ms 1`: 1 ms per engine call whatever the batch,
max batch 64), fed by `tfstream-replay --max` (in this process) with 640x480,
1920x1080 and 3840x2160 JPEG frames of the shapes scenes, for
`ssd_mobilenet_v2_bench` (300x300: its JPEGs decode at a DCT scale).

Per resolution: frames/s, and the CPU milliseconds per frame of the consumer,
the broker and the client (this process), from /proc (bench/cpu.py). In the
same run, this process decodes the same frames at full resolution (what the
consumer did before it decoded at the model's size) and at the model's size,
one thread: the machine's full-resolution decode limit is then
usable cores x 1000 / (full-resolution ms per frame).

    python -m bench.ceiling --repository models [--out ceiling.md] [--json rows.json]

`run_ceiling` is the entry point for bench/run_all.py: it takes a running
broker and returns rows and targets with stable ids.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.cpu import snapshot, usage
from bench.raw_engine import sample_jpegs

MODEL = "ssd_mobilenet_v2_bench"
TITLE = "Pipeline ceiling: one consumer, simulated engine at 1 ms per batch"
RESOLUTIONS = ((640, 480), (1920, 1080), (3840, 2160))
FRAMES = 8
"""Distinct frames per resolution (replayed in a loop)."""
MAX_BATCH = 64
IN_FLIGHT = 64


@dataclass
class CeilingRow:
    id: str
    """Stable: ceiling.<width>x<height>."""
    width: int
    height: int
    kb_per_frame: float
    frames_per_s: float
    answered: int
    errors: int
    cpu_ms: dict[str, float]
    """CPU ms per answered frame: consumer, broker, client."""
    machine_busy: float
    others: float
    full_decode_ms: float
    """CPU ms of one full-resolution decode in this process, one thread, median."""
    model_decode_ms: float
    """CPU ms of the same frame decoded at the model's size (DCT scaling), median."""
    decoded_size: str
    decode_limit_fps: float
    """Usable cores x 1000 / full_decode_ms: frames/s this machine decodes at full size."""
    worker_timing_ms: dict[str, Any] = field(default_factory=dict)


@dataclass
class CeilingTarget:
    id: str
    name: str
    measured: float
    threshold: float
    unit: str = " ms"

    @property
    def met(self) -> bool:
        return not math.isnan(self.measured) and self.measured <= self.threshold


#: (target id, row id, measured quantity, threshold in ms)
TARGETS = (
    ("ceiling.consumer_cpu_1080p", "ceiling.1920x1080", "consumer", 6.0),
    ("ceiling.consumer_cpu_4k", "ceiling.3840x2160", "consumer", 20.0),
    ("ceiling.client_cpu", "ceiling.640x480", "client", 1.0),
)


def usable_cores() -> int:
    with contextlib.suppress(AttributeError, OSError):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def decode_costs(jpegs: list[bytes], repeats: int = 3) -> tuple[float, float, str]:
    """(full-resolution ms, model-size ms, decoded size) per frame: CPU time of this
    thread, medians (CPU time, not wall time, so other tenants' load counts less)."""
    from engines.images import decode_for_model, decode_image
    from engines.resizer import FixedShape

    resizer = FixedShape(300, 300)  # what ssd_mobilenet_v2_bench's pipeline.config says
    full: list[float] = []
    scaled: list[float] = []
    size = ""
    for _ in range(repeats):
        for data in jpegs:
            started = time.thread_time()
            decode_image(data)
            full.append(time.thread_time() - started)
            started = time.thread_time()
            pixels = decode_for_model(data, resizer=resizer).pixels
            scaled.append(time.thread_time() - started)
            size = f"{pixels.shape[1]}x{pixels.shape[0]}"
    return 1000 * sorted(full)[len(full) // 2], 1000 * sorted(scaled)[len(scaled) // 2], size


def broker_pid(cluster: Any) -> int:
    """The broker JVM's pid (LocalKafkaCluster keeps it private; 0 = not measured)."""
    with contextlib.suppress(AttributeError, IndexError, TypeError):
        return int(cluster._nodes[0].process.pid)
    return 0


async def _replay(
    bootstrap: str, prefix: str, folder: Path, seconds: float, pids: dict[str, list[int]]
) -> tuple[dict[str, Any], Any]:
    from consumer.settings import KafkaClientSettings
    from producer_tools.client import DetectClient
    from producer_tools.replay import ReplaySettings, run_replay

    def settings(**values: Any) -> ReplaySettings:
        return ReplaySettings(
            bootstrap=bootstrap,
            topic_prefix=prefix,
            model=MODEL,
            source=str(folder),
            max=True,
            concurrency=IN_FLIGHT,
            progress=False,
            timeout_s=120,
            **values,
        )

    client_settings = KafkaClientSettings(bootstrap=bootstrap, topic_prefix=prefix)
    async with DetectClient(client_settings, timeout_s=120) as client:
        await run_replay(settings(count=2 * IN_FLIGHT), client=client, progress=None)
        before = snapshot(pids)
        run = await run_replay(settings(duration_s=seconds), client=client, progress=None)
        after = snapshot(pids)
    report = run.to_dict()
    return report, usage(before, after, report["answered"])


async def run_ceiling(
    bootstrap: str,
    broker: int,
    repository: Path,
    work: Path,
    seconds: float = 15.0,
    resolutions: tuple[tuple[int, int], ...] = RESOLUTIONS,
) -> tuple[list[CeilingRow], list[CeilingTarget]]:
    """Start one simulated consumer on `bootstrap`, measure every resolution, stop it."""
    from deploy.local.processes import ConsumerProcess

    logs = work / "ceiling-logs"
    logs.mkdir(parents=True, exist_ok=True)
    prefix = f"ceiling{os.getpid()}"
    worker = ConsumerProcess(
        bootstrap,
        repository.resolve(),
        prefix,
        logs,
        extra={
            "TFSTREAM_MODELS": MODEL,
            "TFSTREAM_SIMULATE_BATCH_MS": "1",
            "TFSTREAM_MAX_BATCH": str(MAX_BATCH),
            "TFSTREAM_MAX_INFLIGHT": str(2 * MAX_BATCH),
            "TFSTREAM_LOG_LEVEL": "WARNING",
        },
    ).start()
    rows: list[CeilingRow] = []
    try:
        worker.wait_ready(timeout_s=240)
        assert worker.proc is not None
        pids = {
            "consumer": [worker.proc.pid],
            "broker": [broker] if broker else [],
            "client": [os.getpid()],
        }
        for width, height in resolutions:
            jpegs = sample_jpegs(FRAMES, width, height, seed=width)
            folder = work / f"frames-{width}x{height}"
            folder.mkdir(parents=True, exist_ok=True)
            for i, data in enumerate(jpegs):
                (folder / f"frame_{i:02d}.jpg").write_bytes(data)
            full_ms, model_ms, size = decode_costs(jpegs)
            report, cpu = await _replay(bootstrap, prefix, folder, seconds, pids)
            row = CeilingRow(
                id=f"ceiling.{width}x{height}",
                width=width,
                height=height,
                kb_per_frame=sum(map(len, jpegs)) / len(jpegs) / 1024,
                frames_per_s=report["throughput"],
                answered=report["answered"],
                errors=sum(report["errors"].values()) + report["timeouts"],
                cpu_ms=cpu.per_image_ms,
                machine_busy=cpu.machine_busy,
                others=cpu.others,
                full_decode_ms=full_ms,
                model_decode_ms=model_ms,
                decoded_size=size,
                decode_limit_fps=usable_cores() * 1000 / full_ms,
                worker_timing_ms=report["worker_timing_ms"],
            )
            rows.append(row)
            print(f"  {row_text(row)}", flush=True)
    finally:
        worker.stop()
    return rows, targets(rows)


def targets(rows: list[CeilingRow]) -> list[CeilingTarget]:
    by_id = {row.id: row for row in rows}
    names = {
        "consumer": "consumer CPU per {w}x{h} frame",
        "client": "client (replay) CPU per request, {w}x{h}",
    }
    out = []
    for target_id, row_id, role, threshold in TARGETS:
        row = by_id.get(row_id)
        w, h = row_id.split(".")[1].split("x")
        measured = row.cpu_ms.get(role, math.nan) if row is not None else math.nan
        out.append(CeilingTarget(target_id, names[role].format(w=w, h=h), measured, threshold))
    return out


def row_text(row: CeilingRow) -> str:
    cpu = ", ".join(f"{role} {ms:.2f}" for role, ms in row.cpu_ms.items())
    return (
        f"{row.width}x{row.height}: {row.frames_per_s:.0f} frames/s; CPU ms/frame {cpu}; "
        f"decode {row.full_decode_ms:.1f} ms full, {row.model_decode_ms:.1f} ms at "
        f"{row.decoded_size}; machine {100 * row.machine_busy:.0f}% busy, "
        f"{100 * row.others:.0f}% not ours"
    )


def markdown(rows: list[CeilingRow], found: list[CeilingTarget], heading: str = "##") -> str:
    """The section for docs/benchmarks.md: rows, then targets."""
    cores = usable_cores()
    lines = [
        f"{heading} {TITLE}",
        "",
        f"One consumer with `--simulate-batch-ms 1 --max-batch {MAX_BATCH}` serving `{MODEL}` "
        f"(300x300, from its pipeline.config); `tfstream-replay --max`, {IN_FLIGHT} in flight, "
        f"{FRAMES} distinct JPEG frames (quality 90) per resolution. CPU ms per answered frame "
        "from /proc; 'client' is the replay in the benchmark process. Decode columns: CPU ms "
        "of one decode in this process, one thread, median; the full-resolution decode limit "
        f"is {cores} usable cores x 1000 / full-resolution ms. The machine is shared: other "
        "tenants' load ('not ours') makes frames/s noisy; CPU per frame is steadier.",
        "",
        "| id | frame | KB | frames/s | consumer CPU ms | broker CPU ms | client CPU ms | "
        "full decode CPU ms | model-size decode CPU ms (size) | full-res decode limit, frames/s | "
        "errors | machine busy / not ours |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        cpu = r.cpu_ms
        lines.append(
            f"| {r.id} | {r.width}x{r.height} | {r.kb_per_frame:.0f} | {r.frames_per_s:.0f} | "
            f"{cpu.get('consumer', math.nan):.2f} | {cpu.get('broker', math.nan):.2f} | "
            f"{cpu.get('client', math.nan):.2f} | {r.full_decode_ms:.1f} | "
            f"{r.model_decode_ms:.1f} ({r.decoded_size}) | {r.decode_limit_fps:.0f} | "
            f"{r.errors} | {100 * r.machine_busy:.0f}% / {100 * r.others:.0f}% |"
        )
    lines += ["", "| target | measured | required | result |", "|---|---:|---:|---|"]
    for t in found:
        result = "met" if t.met else "**missed**"
        lines.append(
            f"| {t.id}: {t.name} | {t.measured:.2f}{t.unit} | <= {t.threshold:g}{t.unit} | "
            f"{result} |"
        )
    lines += ["", *explain(rows, found), ""]
    return "\n".join(lines)


def explain(rows: list[CeilingRow], found: list[CeilingTarget]) -> list[str]:
    """One line per target: met, or missed with where the CPU went (the decode
    share from this run's own decode measurement; the rest from profiles)."""
    by_id = {row.id: row for row in rows}
    out = []
    for t in found:
        row = by_id.get(next(r for tid, r, _, _ in TARGETS if tid == t.id))
        if row is None:
            out.append(f"- {t.id}: not measured.")
            continue
        verdict = "met" if t.met else "**missed**"
        if t.id.startswith("ceiling.consumer"):
            rest = t.measured - row.model_decode_ms
            out.append(
                f"- {t.id} {verdict} ({t.measured:.2f} ms, required <= {t.threshold:g}): "
                f"decoding at {row.decoded_size} costs {row.model_decode_ms:.1f} ms of it "
                f"(full resolution: {row.full_decode_ms:.1f} ms); the other {rest:.1f} ms are "
                "fetching the frame, the pipeline and the reply. A py-spy profile of the "
                "consumer at 1080p (one run while writing this section) put ~60% of its busy "
                "samples in Pillow's JPEG decode (ImageFile.load), ~25% in the event loop "
                "(aiokafka fetch, replies) and ~10% in the inference thread (stacking the batch)."
            )
        else:
            out.append(
                f"- {t.id} {verdict} ({t.measured:.2f} ms, required <= {t.threshold:g}): "
                "cProfile (CPU clock) of the replay shows no hotspot: the time is spread over "
                "asyncio callbacks and aiokafka's producer and fetcher, about 17 event-loop "
                "callbacks per request."
            )
    return out


async def _standalone(args: argparse.Namespace, work: Path) -> tuple[list[CeilingRow], Any]:
    from deploy.local.kafka import LocalKafkaCluster

    os.environ.setdefault("TFSTREAM_KAFKA_JVM_OPTS", "-XX:TieredStopAtLevel=4 -Xmx1g")
    cluster = LocalKafkaCluster(brokers=1, workdir=work / "kafka")
    cluster.start(timeout_s=120)
    try:
        return await run_ceiling(
            cluster.bootstrap, broker_pid(cluster), args.repository, work, args.seconds
        )
    finally:
        cluster.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repository", type=Path, default=Path("models"))
    parser.add_argument("--seconds", type=float, default=15.0, help="measurement window per row")
    parser.add_argument("--out", type=Path, help="write the markdown section here")
    parser.add_argument("--json", type=Path, help="write the rows and targets here")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with tempfile.TemporaryDirectory(prefix="tfstream-ceiling-") as tmp:
        rows, found = asyncio.run(_standalone(args, Path(tmp)))
    text = markdown(rows, found)
    print(text)
    if args.out:
        args.out.write_text(text, encoding="utf-8")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "rows": [asdict(r) for r in rows],
                    "targets": [dict(asdict(t), met=t.met) for t in found],
                },
                indent=1,
            )
        )
    return 0 if all(t.met for t in found) else 1


if __name__ == "__main__":
    sys.exit(main())
