"""Section 5, pipeline ceiling: what one consumer takes when the engine is nearly free.

On a GPU the engine call is cheap and the rest of the pipeline sets the
throughput: fetching, decoding, replying, the broker and the client. This
section measures that rest: one consumer whose engine is the simulated
accelerator (`--simulate-batch-ms 1`: 1 ms per engine call whatever the batch,
max batch 64), fed by `tfstream-replay --max` (in this process, 64 in flight)
with 640x480, 1920x1080 and 3840x2160 JPEG frames of the shapes scenes, and
1920x1080 textured frames (the scenes with sensor-like grain, JPEG quality 85,
~440 KB: what cameras send), for `ssd_mobilenet_v2_bench` (300x300: its JPEGs
decode at a DCT scale).

Per resolution: frames/s, and the CPU milliseconds per frame of the consumer,
the broker and the client ('bench', this process), from /proc (bench/cpu.py).
In the same run, this process decodes the same frames at full resolution (what
the consumer did before it decoded at the model's size) and at the model's
size, one thread: the machine's full-resolution decode limit is then usable
cores x 1000 / (full-resolution ms per frame). What the consumer spends per
frame beyond the model-size decode (record handling, copies, replies) is the
part the pipeline can still lose; its target is 1.5 ms.
"""

from __future__ import annotations

import math
import os
import statistics
import time

from bench.context import Context
from bench.measure import replay
from bench.processes import MODEL, pids, worker_env
from bench.raw_engine import sample_jpegs, textured_jpegs
from bench.results import Row, Target
from consumer.settings import usable_cores
from deploy.local.processes import ConsumerProcess

TITLE = "5. Pipeline ceiling: one consumer, simulated engine at 1 ms per batch"
RESOLUTIONS = ((640, 480), (1920, 1080), (3840, 2160))
TEXTURED = (1920, 1080)
"""The resolution of the textured (camera-like) frames."""
FRAMES = 8
"""Distinct frames per resolution (replayed in a loop)."""
MAX_BATCH = 64
IN_FLIGHT = 64

KB = "KB/frame"
FULL_DECODE = "full decode CPU ms"
MODEL_DECODE = "model-size decode CPU ms"
DECODE_LIMIT = "full-res decode limit, frames/s (usable cores x 1000 / full decode ms)"
BEYOND_DECODE = "consumer CPU beyond the model-size decode, ms"


def row_id(width: int, height: int, textured: bool = False) -> str:
    return f"ceiling.{width}x{height}" + (".textured" if textured else "")


TARGETS = [
    Target(
        "consumer CPU per 1920x1080 frame", row_id(1920, 1080), "cpu.consumer", 6.0, False, " ms"
    ),
    Target(
        "consumer CPU per 3840x2160 frame", row_id(3840, 2160), "cpu.consumer", 20.0, False, " ms"
    ),
    Target(
        "client (replay) CPU per request, 640x480", row_id(640, 480), "cpu.bench", 1.0, False, " ms"
    ),
    Target(
        "consumer CPU per 1920x1080 frame beyond its model-size decode",
        row_id(1920, 1080),
        BEYOND_DECODE,
        1.5,
        False,
        " ms",
    ),
    Target(
        "consumer CPU per textured 1920x1080 frame beyond its model-size decode",
        row_id(*TEXTURED, textured=True),
        BEYOND_DECODE,
        1.5,
        False,
        " ms",
    ),
    Target(
        "client (replay) CPU per request, 1920x1080",
        row_id(1920, 1080),
        "cpu.bench",
        1.5,
        False,
        " ms",
    ),
    Target(
        "client (replay) CPU per request, textured 1920x1080",
        row_id(*TEXTURED, textured=True),
        "cpu.bench",
        1.5,
        False,
        " ms",
    ),
]


def decode_costs(jpegs: list[bytes], repeats: int = 3) -> tuple[float, float, str]:
    """(full-resolution ms, model-size ms, decoded size) per frame: CPU time of this
    thread (not wall time, so other tenants' load counts less), means over every
    frame: the replay sends each frame as often, and the consumer's CPU per frame
    it is set against is a mean too."""
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
    return 1000 * statistics.fmean(full), 1000 * statistics.fmean(scaled), size


async def ceiling(ctx: Context) -> list[Row]:
    """One simulated consumer on the run's broker, every resolution in turn."""
    print(TITLE, flush=True)
    prefix = f"ceiling{os.getpid()}"
    extra = worker_env(simulate_batch_ms=1, max_batch=MAX_BATCH, max_inflight=2 * MAX_BATCH)
    worker = ConsumerProcess(ctx.bootstrap, ctx.repository, prefix, ctx.logs, extra=extra).start()
    rows: list[Row] = []
    try:
        worker.wait_ready(timeout_s=240)
        ctx.measure_cpu_of(consumer=pids([worker]))
        kinds = [(w, h, False) for w, h in RESOLUTIONS] + [(*TEXTURED, True)]
        for width, height, textured in kinds:
            make = textured_jpegs if textured else sample_jpegs
            jpegs = make(FRAMES, width, height, seed=width)
            folder = ctx.folder.parent / f"frames-{row_id(width, height, textured)}"
            folder.mkdir(parents=True, exist_ok=True)
            for i, data in enumerate(jpegs):
                (folder / f"frame_{i:02d}.jpg").write_bytes(data)
            full_ms, model_ms, size = decode_costs(jpegs)
            m = await replay(ctx.bench, ctx.bootstrap, prefix, folder, IN_FLIGHT, 2 * IN_FLIGHT)
            m.note = f"{m.note}; decoded at {size} for {MODEL}"
            consumer_ms = m.cpu.per_image_ms.get("consumer", math.nan) if m.cpu else math.nan
            kind = "textured JPEG frames (q85)" if textured else "JPEG frames"
            rows.append(
                Row(
                    row_id(width, height, textured),
                    TITLE,
                    f"{width}x{height} {kind}, {IN_FLIGHT} in flight",
                    m,
                    extra={
                        KB: sum(map(len, jpegs)) / len(jpegs) / 1024,
                        FULL_DECODE: full_ms,
                        MODEL_DECODE: model_ms,
                        BEYOND_DECODE: consumer_ms - model_ms,
                        DECODE_LIMIT: usable_cores() * 1000 / full_ms,
                    },
                ).show()
            )
    finally:
        worker.stop()
    return rows
