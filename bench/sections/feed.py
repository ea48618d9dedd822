"""Section 5b, feeding a GPU: the consumer's CPU per camera frame, measured from outside.

Issue 31's method (bench/feed.py): one consumer with the simulated engine (1 ms
per batch, max batch 64, `--max-inflight` as deep as the replay), fed by a
`tfstream-replay --max` process with 32 distinct textured frames; the consumer's
CPU from /proc over the whole replay divided by the frames answered, against the
same frames decoded alone with PIL's `draft("RGB", (300, 300))` in another
process. 1920x1080 and 3840x2160, 64 and 512 in flight, the median of three
replays (with --quick: one 2 s replay, 1080p only). Section 5 measures the
same quantity inside a warm window with the decode of the full
`decode_for_model`; docs/profile.md says why the two differ.
"""

from __future__ import annotations

import os
import statistics

from bench import feed
from bench.context import Context
from bench.results import Measurement, Row, Target

TITLE = "5b. Feeding a GPU: consumer CPU per camera frame over a whole replay (issue 31's method)"

CONSUMER = "consumer CPU ms/frame (median)"
DECODE = "decode alone ms (PIL draft)"
BEYOND = "consumer CPU beyond the decode, ms"
RUNS = "runs beyond the decode, ms (min / max)"
OWN_DECODE = "its own decode alone ms (engines.images)"
BEYOND_OWN = "consumer CPU beyond its own decode, ms"
REPLAY = "replay CPU ms/frame"
LOOP = "of which the event loop thread, ms"


def row_id(width: int, height: int, in_flight: int) -> str:
    return f"feed.{width}x{height}.{in_flight}"


TARGETS = [
    Target(
        f"consumer CPU per {w}x{h} camera frame beyond the DCT-scaled decode, {n} in flight",
        row_id(w, h, n),
        BEYOND,
        feed.TARGET_MS,
        False,
        " ms",
    )
    for w, h in feed.RESOLUTIONS
    for n in feed.IN_FLIGHT
]


def to_row(result: feed.FeedResult) -> Row:
    runs = [r.consumer_ms - result.decode_ms for r in result.runs]
    fps = statistics.median(r.frames_per_s for r in result.runs)
    answered = sum(r.answered for r in result.runs)
    m = Measurement(
        fps,
        float("nan"),
        float("nan"),
        answered,
        note=f"{len(result.runs)} replays of {result.kb:.0f} KB frames; load average "
        f"{os.getloadavg()[0]:.1f} after",
    )
    return Row(
        row_id(result.width, result.height, result.in_flight),
        TITLE,
        f"{result.width}x{result.height} textured frames, {result.in_flight} in flight",
        m,
        extra={
            CONSUMER: result.consumer_ms,
            DECODE: result.decode_ms,
            BEYOND: result.beyond_ms,
            RUNS + " min": min(runs),
            RUNS + " max": max(runs),
            OWN_DECODE: result.own_decode_ms,
            BEYOND_OWN: result.consumer_ms - result.own_decode_ms,
            LOOP: statistics.median(r.loop_ms for r in result.runs),
            REPLAY: statistics.median(r.replay_ms for r in result.runs),
        },
    )


async def feeding(ctx: Context) -> list[Row]:
    print(TITLE, flush=True)
    quick = bool(getattr(ctx.args, "quick", False))
    work = ctx.folder.parent / "feed"
    sizes = feed.RESOLUTIONS[:1] if quick else feed.RESOLUTIONS  # 4K frames take a while to make
    results = await feed.measure(
        ctx.bootstrap,
        ctx.repository,
        work,
        ctx.logs,
        runs=1 if quick else 3,
        seconds=ctx.bench.seconds if quick else max(ctx.bench.seconds, 20.0),
        resolutions=sizes,
    )
    return [to_row(r).show() for r in results]
