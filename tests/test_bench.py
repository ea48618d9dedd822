"""The benchmark's bookkeeping, without running a benchmark: targets find rows by id."""

from __future__ import annotations

import asyncio
import math

from bench import feed as feed_method
from bench.cpu import CpuUse
from bench.page import markdown
from bench.raw_engine import sample_jpegs
from bench.results import Bench, Measurement, Row, Target, evaluate
from bench.sections import (
    SECTIONS,
    TARGETS,
    cameras,
    ceiling,
    conflation,
    feed,
    fixed,
    scaling,
    serving,
)


def row(
    row_id: str, name: str, vs_raw: float | None = None, overhead_ms: float | None = None
) -> Row:
    return Row(
        row_id, "1. a section", name, Measurement(10.0, 5.0, 9.0, 100), "row", vs_raw, overhead_ms
    )


def test_targets_find_their_rows_by_id_whatever_the_display_text() -> None:
    targets = [
        Target("throughput", "a", "vs_raw", 0.9, True),
        Target("overhead", "b", "overhead_ms", 3.0, False, " ms"),
        Target("too slow", "c", "vs_raw", 0.9, True),
    ]
    rows = [
        row("a", "renamed for the page", vs_raw=0.95),
        row("b", "also renamed", overhead_ms=4.5),
        row("c", "no ratio"),
    ]
    outcomes = evaluate(rows, targets)
    assert [(o.measured, o.verdict) for o in outcomes[:2]] == [(0.95, "met"), (4.5, "**missed**")]
    assert math.isnan(outcomes[2].measured or 0.0) and outcomes[2].verdict == "**missed**"


def test_a_target_whose_row_was_not_run_says_so() -> None:
    (outcome,) = evaluate([row("a", "x", vs_raw=2.0)], [Target("t", "gone", "vs_raw", 1.0, True)])
    assert outcome.measured is None and not outcome.met and outcome.verdict == "not measured"
    page = markdown(Bench(1, 1, 0.1), [row("a", "x", vs_raw=2.0)], [outcome], {}, [], 60)
    assert "| t | - | >= 1 | not measured |" in page


def test_every_target_names_a_row_id_its_section_produces() -> None:
    produced = {
        serving.KAFKA_16,
        serving.KAFKA_1,
        serving.HTTP_KAFKA_16,
        serving.HTTP_KAFKA_1,
        serving.EMBEDDED_16,
        serving.EMBEDDED_1,
        *(scaling.row_id(n) for n in scaling.COUNTS),
        *(ceiling.row_id(w, h) for w, h in ceiling.RESOLUTIONS),
        ceiling.row_id(*ceiling.TEXTURED, textured=True),
        *(feed.row_id(w, h, n) for w, h in feed_method.RESOLUTIONS for n in feed_method.IN_FLIGHT),
        *(fixed.row_id(n) for n in (1, 2)),
        conflation.OFF,
        conflation.ON,
        *(cameras.row_id(size, 5) for size in cameras.SIZES),
    }
    assert {t.row_id for t in TARGETS} <= produced
    assert list(SECTIONS) == [
        "kafka",
        "embedded",
        "fixed",
        "scaling",
        "ceiling",
        "feed",
        "conflation",
        "cameras",
    ]


def test_targets_on_cpu_by_role_and_section_quantities_and_their_table() -> None:
    cpu = CpuUse({"consumer": 7.5, "broker": 0.4, "bench": 0.8}, 0.9, 0.1)
    hd = Row(
        ceiling.row_id(1920, 1080),
        ceiling.TITLE,
        "1920x1080 frames",
        Measurement(120.0, 30.0, 60.0, 1800, cpu=cpu),
        extra={ceiling.FULL_DECODE: 14.25, ceiling.MODEL_DECODE: 3.5},
    )
    on = Row(
        conflation.ON,
        "6. conflation",
        "latest",
        Measurement(9.0, math.nan, math.nan, 600),
        extra={conflation.AGE_ANSWER_P50: 161.0},
    )
    outcomes = {o.target.name: o for o in evaluate([hd, on], TARGETS)}
    consumer_hd = outcomes["consumer CPU per 1920x1080 frame"]
    assert (consumer_hd.measured, consumer_hd.verdict) == (7.5, "**missed**")
    assert [o.measured for o in outcomes.values() if o.target.row_id == conflation.ON] == [161.0]
    assert outcomes["consumer CPU per 3840x2160 frame"].verdict == "not measured"
    page = markdown(Bench(1, 1, 0.1), [hd, on], list(outcomes.values()), {}, [], 60)
    heading = "| row | id | consumer CPU ms/image | broker CPU ms/image | bench CPU ms/image |"
    assert heading in page
    assert "| 1920x1080 frames | `ceiling.1920x1080` | 7.50 | 0.40 | 0.80 | 14.2 | 3.50 |" in page
    assert "| latest | `conflation.on` | 161.0 |" in page
    assert "| consumer CPU per 1920x1080 frame | 7.50 ms | <= 6 ms | **missed** |" in page


def test_a_lone_request_row_reports_the_median_of_its_pairs() -> None:
    """The pairs' own median difference is the row's overhead, not p50 minus a raw p50."""
    from bench.lone import pairs

    class FakeDetector:
        resizer = None

        def detect(self, images: object, options: object, sizes: object) -> list[object]:
            return [[]]

    async def served(index: int, data: bytes) -> None:
        await asyncio.sleep(0.004)

    jpeg = sample_jpegs(1)[0]
    result = asyncio.run(pairs(FakeDetector(), [jpeg], served, rounds=20, warmup=1))  # type: ignore[arg-type]
    assert result.rounds == 20
    assert result.diff_p25_ms <= result.diff_p50_ms <= result.diff_p75_ms
    # served sleeps 4 ms; the raw call decodes a 640x480 JPEG: the difference is of that order
    assert -30 < result.diff_p50_ms < 30
    assert result.served_p50_ms >= 4.0
    assert result.raw_cpu_ms > 0


def test_feed_rows_carry_the_median_beyond_the_decode_and_their_targets_read_it() -> None:
    runs = [
        feed_method.FeedRun(
            600, consumer_ms=ms, replay_ms=2.0, faults=100.0, loop_ms=1.0, frames_per_s=30.0
        )
        for ms in (9.0, 8.0, 12.0)
    ]
    result = feed_method.FeedResult(
        1920, 1080, 512, 448.0, decode_ms=7.5, runs=runs, own_decode_ms=6.0
    )
    row = feed.to_row(result)
    assert row.id == feed.row_id(1920, 1080, 512)
    assert row.value(feed.BEYOND) == 1.5  # median consumer 9.0 - decode 7.5
    assert row.value(feed.RUNS + " min") == 0.5 and row.value(feed.RUNS + " max") == 4.5
    assert row.value(feed.BEYOND_OWN) == 3.0  # the consumer's own, faster decode
    (outcome,) = [o for o in evaluate([row], feed.TARGETS) if o.measured is not None]
    assert outcome.measured == 1.5 and not outcome.met
    page = markdown(Bench(1, 1, 0.1), [row], [outcome], {}, [], 60)
    assert feed.row_id(1920, 1080, 512) in page and feed.BEYOND in page


def test_the_proc_readers_read_cpu_of_a_thread_and_minor_faults() -> None:
    """bench.feed's figures come from these fields of /proc/<pid>/stat: the main
    thread's CPU is part of the process's, and touching fresh memory faults pages."""
    import os

    import numpy as np

    from bench.cpu import minor_faults, process_cpu_s

    pid = os.getpid()
    before = minor_faults(pid)
    touched = np.ones(64 * 2**20, np.uint8)  # 64 MiB written: 32 huge pages at the fewest
    assert minor_faults(pid) - before >= 32 and int(touched[-1]) == 1
    sum(i * i for i in range(2_000_000))  # CPU on the main thread
    main, total = process_cpu_s(pid, pid), process_cpu_s(pid)
    assert 0 < main <= total
    assert process_cpu_s(2**22 + 1) == 0.0 and minor_faults(2**22 + 1) == 0  # no such pid
